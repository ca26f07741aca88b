"""Tests for medfm.data.synthetic: determinism, center signature, headers with synthetic PHI."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy.stats import f_oneway

from medfm.data.synthetic import CLASS_NAMES, SyntheticSpec, draw_class, generate, write_dataset

SMALL = SyntheticSpec(n_centers=3, cases_per_center=4, images_per_case=1, size=32)

# The DICOM identity each center must carry (Modality, Manufacturer, InstitutionName).
CENTER_IDENTITY = {
    "center_a": ("US", "Acme Imaging", "ZZ North Valley Hospital"),
    "center_b": ("US", "Borealis Medical", "ZZ Lakeside Clinic"),
    "center_c": ("US", "Cardinal Systems", "ZZ Hillcrest University Hospital"),
}


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_labels(labels_csv: Path) -> tuple[list[str], list[dict]]:
    with open(labels_csv, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_dataset(out, SMALL)
    return out


def test_write_dataset_returns_labels_and_writes_one_file_per_image(dataset):
    _, rows = read_labels(dataset / "labels.csv")
    images = [p for p in (dataset / "raw").rglob("*") if p.is_file()]
    assert len(rows) == len(images) == 3 * 4 * 1
    assert sorted(r["path"] for r in rows) == sorted(
        p.relative_to(dataset).as_posix() for p in images
    )
    suffixes = sorted("".join(p.suffixes) for p in images)
    # Formats cycle per case: each format is used by exactly 4 of the 12 cases.
    assert suffixes.count(".dcm") == suffixes.count(".nii.gz") == suffixes.count(".png") == 4


def test_same_seed_gives_byte_identical_files(tmp_path, dataset):
    write_dataset(tmp_path, SMALL)
    again = file_hashes(tmp_path)
    assert len(again) == 13  # 12 images + labels.csv
    assert again == file_hashes(dataset)


def test_different_seed_changes_every_image_but_not_labels(tmp_path, dataset):
    other = SyntheticSpec(n_centers=3, cases_per_center=4, images_per_case=1, size=32, seed=1)
    write_dataset(tmp_path, other)
    first, second = file_hashes(dataset), file_hashes(tmp_path)
    assert first.keys() == second.keys()
    assert first["labels.csv"] == second["labels.csv"]
    changed = [k for k in first if k != "labels.csv" and first[k] != second[k]]
    assert len(changed) == 12


def test_generate_is_balanced_and_deterministic():
    spec = SyntheticSpec(n_centers=2, cases_per_center=8, images_per_case=2, size=16, seed=3)
    items = list(generate(spec))
    assert len(items) == 2 * 8 * 2
    for center in ("center_a", "center_b"):
        labels = [it.label for it in items if it.center.name == center]
        assert np.bincount(labels, minlength=4).tolist() == [4, 4, 4, 4]
    assert all(it.image.dtype == np.uint8 and it.image.shape == (16, 16) for it in items)
    again = list(generate(spec))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(items, again, strict=True))


def _center_means(strength: float) -> dict[str, list[float]]:
    spec = SyntheticSpec(
        n_centers=4,
        cases_per_center=12,
        images_per_case=1,
        size=32,
        center_strength=strength,
        seed=0,
    )
    means: dict[str, list[float]] = {}
    for item in generate(spec):
        means.setdefault(item.center.name, []).append(float(item.image.mean()))
    return means


def test_center_strength_zero_removes_center_signature():
    means = _center_means(0.0)
    per_center = [np.mean(v) for v in means.values()]
    # Same biology in every center (3 cases of each class); only sampling noise differs.
    assert np.ptp(per_center) < 5.0
    assert f_oneway(*means.values()).pvalue > 0.5


def test_center_strength_one_makes_centers_separable():
    means = _center_means(1.0)
    per_center = {k: np.mean(v) for k, v in means.items()}
    assert np.ptp(list(per_center.values())) > 50.0
    assert f_oneway(*means.values()).pvalue < 1e-10
    # center_a brightens (scale 1.35, gamma 0.65); center_b darkens (scale 0.7, gamma 1.5).
    assert per_center["center_a"] > per_center["center_c"] > per_center["center_b"]


def test_dicom_headers_carry_center_identity_and_synthetic_phi(dataset):
    dicoms = sorted((dataset / "raw").rglob("*.dcm"))
    assert len(dicoms) == 4
    centers_seen = set()
    for path in dicoms:
        ds = pydicom.dcmread(path)
        center = path.relative_to(dataset / "raw").parts[0]
        centers_seen.add(center)
        assert (ds.Modality, ds.Manufacturer, ds.InstitutionName) == CENTER_IDENTITY[center]
        case = path.parent.name
        assert str(ds.PatientName).startswith("ZZSYNTH^")
        assert str(ds.PatientName).endswith(case[-4:])
        assert str(ds.PatientID).startswith("MRN") and str(ds.PatientID)[3:].isdigit()
        assert (ds.Rows, ds.Columns) == (32, 32)
    assert centers_seen == set(CENTER_IDENTITY)


def test_labels_csv_columns_values_and_no_phi(dataset):
    columns, rows = read_labels(dataset / "labels.csv")
    assert columns == ["path", "label", "label_name", "center"]
    for row in rows:
        assert row["label_name"] == CLASS_NAMES[int(row["label"])]
        assert row["path"].startswith(f"raw/{row['center']}/")
    text = (dataset / "labels.csv").read_text()
    phi = []
    for path in (dataset / "raw").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        phi += [
            str(ds.PatientName),
            str(ds.PatientID),
            str(ds.PatientBirthDate),
            str(ds.AccessionNumber),
            str(ds.InstitutionName),
        ]
    assert len(phi) == 20
    assert [value for value in phi if value in text] == []
    assert "ZZSYNTH" not in text and "MRN" not in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"center_strength": 1.5},
        {"center_strength": -0.1},
        {"n_centers": 0},
        {"n_centers": 5},
    ],
)
def test_invalid_spec_raises(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SyntheticSpec(**kwargs)


def test_draw_class_rejects_unknown_label():
    with pytest.raises(ValueError, match="label"):
        draw_class(4, 16, np.random.default_rng(0))


def test_color_writes_rgb_pngs(tmp_path):
    spec = SyntheticSpec(n_centers=2, cases_per_center=3, images_per_case=1, size=32, color=True)
    write_dataset(tmp_path, spec)
    files = sorted(p for p in (tmp_path / "raw").rglob("*") if p.is_file())
    assert len(files) == 6
    assert {p.suffix for p in files} == {".png"}
    for path in files:
        with Image.open(path) as img:
            assert img.mode == "RGB"
            assert img.size == (32, 32)
            pixels = np.asarray(img)
        # A stain, not grey replicated: the channels differ.
        assert not np.array_equal(pixels[..., 0], pixels[..., 2])
