"""Tests for medfm.data.ingestion.ingest on synthetic data with bad files mixed in, and on real
files."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import nibabel
import nibabel.testing
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medfm.data.ingestion.ingest import ingest, read_labels, scan
from medfm.data.ingestion.manifest import MANIFEST_COLUMNS, read_manifest
from medfm.data.synthetic import SyntheticSpec, write_dataset
from medfm.data.writers import write_dicom, write_nifti

SPEC = SyntheticSpec(n_centers=3, cases_per_center=4, images_per_case=2, size=32)
N_GOOD = 3 * 4 * 2
CENTERS = {"center_a", "center_b", "center_c"}
INSTITUTIONS = (
    "ZZ North Valley Hospital",
    "ZZ Lakeside Clinic",
    "ZZ Hillcrest University Hospital",
)
# Bad files, relative to the raw folder, and a word their quarantine reason must contain.
BAD_FILES = {
    "center_a/case_0001/empty.dcm": "empty file",
    "center_a/case_0003/truncated.dcm": "no pixel data",
    "center_b/random.dcm": "not a readable DICOM",
    "center_b/notes.txt": "unsupported",
    "center_c/case_0009/garbage.nii.gz": "nifti reader failed",
}
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*nvImageCodec"),
    pytest.mark.filterwarnings("ignore:.*ImageOrientationPatient"),
]


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def phi_values(raw: Path) -> list[str]:
    values = []
    for path in raw.rglob("img_*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        values += [
            str(ds.PatientName),
            str(ds.PatientID),
            str(ds.PatientBirthDate),
            str(ds.AccessionNumber),
            str(ds.InstitutionName),
        ]
    return values


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of a synthetic dataset (raw/ + labels.csv) with bad files added to raw/."""
    original = tmp_path_factory.mktemp("synthetic")
    write_dataset(original, SPEC)
    copy = tmp_path_factory.mktemp("source") / "data"
    shutil.copytree(original, copy)
    raw = copy / "raw"
    good_dicom = sorted(raw.rglob("*.dcm"))[0].read_bytes()
    contents = {
        "center_a/case_0001/empty.dcm": b"",
        "center_a/case_0003/truncated.dcm": good_dicom[:200],
        "center_b/random.dcm": np.random.default_rng(0).bytes(300),
        "center_b/notes.txt": b"radiology notes, not an image\n",
        "center_c/case_0009/garbage.nii.gz": b"\x1f\x8b this is not a gzip stream" * 10,
    }
    for rel, data in contents.items():
        (raw / rel).write_bytes(data)
    return copy


@pytest.fixture(scope="module")
def ingested(source, tmp_path_factory):
    before = sha256_tree(source)
    out = tmp_path_factory.mktemp("ingest")
    result = ingest(
        [source / "raw"], out, labels=source / "labels.csv", salt="salt-one", progress=False
    )
    return result, out, before


def test_report_counts_add_up(ingested):
    result, out, _ = ingested
    report = json.loads((out / "report.json").read_text())
    assert report == result.counts
    assert report["seen"] == report["accepted"] + report["rejected"]
    assert (report["seen"], report["accepted"], report["rejected"]) == (N_GOOD + 5, N_GOOD, 5)
    assert report["formats"] == {"dicom": 8, "nifti": 8, "png": 8}
    assert report["modalities"] == {"US": 8, "unknown": 16}
    assert report["centers"] == {"center_a": 8, "center_b": 8, "center_c": 8}
    assert report["patients"] == 12
    assert report["labels_unmatched_rows"] == 0
    assert report["rows_without_label"] == 0
    assert sum(report["splits"].values()) == N_GOOD


def test_every_bad_file_quarantined_with_its_reason(ingested, source, quarantined_sources):
    _, out, _ = ingested
    columns, rows = read_csv(out / "quarantine.csv")
    assert columns == ["id", "suffix", "reason"]
    assert all(r["id"].startswith("file-") and "/" not in r["id"] for r in rows)
    reasons = {path: r["reason"] for path, r in quarantined_sources(out).items()}
    expected = {str((source / "raw" / rel).resolve()): word for rel, word in BAD_FILES.items()}
    assert reasons.keys() == expected.keys()
    for path, word in expected.items():
        assert word in reasons[path], (path, reasons[path])
    assert (
        reasons[str((source / "raw/center_b/notes.txt").resolve())]
        == "unsupported file type '.txt'"
    )
    assert (
        reasons[str((source / "raw/center_a/case_0001/empty.dcm").resolve())]
        == "empty file (0 bytes)"
    )


def test_every_good_file_accepted_with_manifest_columns(ingested, source):
    result, out, _ = ingested
    columns, rows = read_csv(out / "manifest.csv")
    assert tuple(columns) == MANIFEST_COLUMNS
    assert [r["path"] for r in rows] == [f"source:{r['id']}" for r in rows]  # no source path
    _, labels = read_csv(source / "labels.csv")
    assert sorted(r["path"] for r in read_manifest(out / "manifest.csv")) == sorted(
        str((source / r["path"]).resolve()) for r in labels
    )
    private = out / "private" / "source_map.csv"
    assert private.stat().st_mode & 0o777 == 0o600
    assert (out / "private").stat().st_mode & 0o777 == 0o700
    assert len(rows) == len(result.rows) == N_GOOD
    for row in rows:
        assert row["shape"] == "32x32"
        assert row["format"] in {"dicom", "nifti", "png"}
        assert re.fullmatch(r"pat-[0-9a-f]{16}", row["patient"])
        assert re.fullmatch(r"img-[0-9a-f]{16}", row["id"])
        assert row["split"] in {"train", "val", "test"}
    assert len({r["id"] for r in rows}) == N_GOOD


def test_source_files_unchanged(ingested, source):
    _, _, before = ingested
    assert sha256_tree(source) == before
    assert len(before) == N_GOOD + 5 + 1  # images, bad files, labels.csv


def test_no_phi_in_any_output(ingested, source):
    _, out, _ = ingested
    phi = phi_values(source / "raw")
    assert len(phi) == 8 * 5
    for name in ("manifest.csv", "quarantine.csv", "report.json"):
        text = (out / name).read_text()
        assert [v for v in phi if v in text] == [], name
        assert "ZZSYNTH" not in text and "MRN" not in text


def test_label_and_center_come_from_labels_csv(ingested, source):
    result, _, _ = ingested
    labels = read_labels(source / "labels.csv", "path").rows  # keyed by resolved path
    assert len(labels) == N_GOOD
    for row in result.rows:
        expected = labels[row["path"]]
        assert row["label"] == expected["label"]
        assert row["center"] == expected["center"]
        assert row["center"] == Path(row["path"]).parts[-3]


def test_patient_in_one_split_and_images_of_a_case_share_a_patient(ingested):
    result, _, _ = ingested
    by_case: dict[str, set] = {}
    split_of: dict[str, set] = {}
    for row in result.rows:
        by_case.setdefault(Path(row["path"]).parent.name, set()).add(row["patient"])
        split_of.setdefault(row["patient"], set()).add(row["split"])
    assert all(len(p) == 1 for p in by_case.values())
    assert len({next(iter(p)) for p in by_case.values()}) == 12
    assert all(len(s) == 1 for s in split_of.values())
    # Three patients per label, cut at round(3 * (0.6, 0.8, 1.0)) = (2, 2, 3).
    for label in "0123":
        per_split = Counter(s for p, s in patient_split(result.rows, label).items())
        assert per_split == {"train": 2, "test": 1}


def patient_split(rows: list[dict], label: str) -> dict[str, str]:
    return {r["patient"]: r["split"] for r in rows if r["label"] == label}


def test_same_salt_same_pseudonyms_other_salt_different(ingested, source, tmp_path):
    result, _, _ = ingested
    first = {r["path"]: (r["id"], r["patient"], r["study"], r["series"]) for r in result.rows}
    same = ingest(
        [source / "raw"],
        tmp_path / "same",
        labels=source / "labels.csv",
        salt="salt-one",
        progress=False,
    )
    assert {r["path"]: (r["id"], r["patient"], r["study"], r["series"]) for r in same.rows} == first
    assert (tmp_path / "same/manifest.csv").read_bytes() == Path(result.manifest).read_bytes()
    other = ingest(
        [source / "raw"],
        tmp_path / "other",
        labels=source / "labels.csv",
        salt="salt-two",
        progress=False,
    )
    other_patients = {r["path"]: r["patient"] for r in other.rows}
    assert other_patients.keys() == first.keys()
    assert all(other_patients[p] != first[p][1] for p in first)
    assert not (tmp_path / "same/private/pseudonym_salt.key").exists()


def test_center_from_dicom_institution_is_pseudonymised(source, tmp_path):
    result = ingest(
        [source / "raw"],
        tmp_path,
        labels=source / "labels.csv",
        salt="s",
        center="dicom:InstitutionName",
        progress=False,
    )
    dicom_centers = {r["center"] for r in result.rows if r["format"] == "dicom"}
    assert len(dicom_centers) == 3
    assert all(re.fullmatch(r"c-[0-9a-f]{16}", c) for c in dicom_centers)
    # NIfTI and PNG files have no institution header.
    assert {r["center"] for r in result.rows if r["format"] != "dicom"} == {""}
    for name in ("manifest.csv", "report.json"):
        text = (tmp_path / name).read_text()
        assert not any(inst in text for inst in INSTITUTIONS)


def test_center_from_folder_level(source, tmp_path):
    result = ingest([source / "raw"], tmp_path, salt="s", center="folder:0", progress=False)
    assert {r["center"] for r in result.rows} == CENTERS
    for row in result.rows:
        assert row["center"] == Path(row["path"]).parts[-3]
        assert row["label"] == ""  # no labels file given
    assert result.counts["rows_without_label"] == N_GOOD


def test_bad_center_spec_raises(source, tmp_path):
    with pytest.raises(ValueError, match="dicom:TAG"):
        ingest([source / "raw"], tmp_path, salt="s", center="header:Modality", progress=False)


def test_missing_source_and_label_column_raise(source, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ingest([tmp_path / "nowhere"], tmp_path / "out", salt="s", progress=False)
    with pytest.raises(ValueError, match="--label-key 'case': join on one of path, patient"):
        ingest(
            [source / "raw"],
            tmp_path / "out",
            labels=source / "labels.csv",
            label_key="case",
            salt="s",
            progress=False,
        )


def test_scan_skips_hidden_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"1")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"1")
    assert scan([tmp_path]) == [(tmp_path / "a" / "x.png", tmp_path)]
    assert scan([tmp_path / "a" / "x.png"]) == [(tmp_path / "a" / "x.png", tmp_path / "a")]


def test_salt_file_created_without_salt(source, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDFM_PSEUDONYM_SALT", raising=False)
    first = ingest([source / "raw"], tmp_path, salt=None, progress=False)
    key = tmp_path / "private" / "pseudonym_salt.key"  # a re-identification key: owner-only
    assert key.is_file() and not (tmp_path / "pseudonym_salt.key").exists()
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o777 == 0o700
    again = ingest([source / "raw"], tmp_path, salt=None, progress=False)
    assert [r["patient"] for r in again.rows] == [r["patient"] for r in first.rows]


def test_a_salt_file_at_the_old_place_still_gives_the_same_pseudonyms(
    source, tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("MEDFM_PSEUDONYM_SALT", raising=False)
    (tmp_path / "pseudonym_salt.key").write_text("old-salt")
    old = ingest([source / "raw"], tmp_path, salt=None, progress=False)
    given = ingest([source / "raw"], tmp_path / "b", salt="old-salt", progress=False)
    assert [r["patient"] for r in old.rows] == [r["patient"] for r in given.rows]
    assert any("move it to" in r.getMessage() for r in caplog.records)


# --- Real files shipped with pydicom and nibabel -------------------------------------------


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("real")
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_truncated.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    anatomical = os.path.join(nibabel.testing.data_path, "anatomical.nii")
    assert os.path.isfile(anatomical)
    assert nibabel.load(anatomical).shape == (33, 41, 25)
    shutil.copy(anatomical, folder / "anatomical.nii")
    return folder


@pytest.fixture(scope="module")
def real_ingested(real_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("real_out")
    result = ingest([real_files], out, salt="s", center="dicom:InstitutionName", progress=False)
    return result, {Path(r["path"]).name: r for r in result.rows}


def test_real_dicom_files_accepted(real_ingested, real_files):
    result, rows = real_ingested
    assert rows["CT_small.dcm"]["modality"] == "CT"
    assert rows["CT_small.dcm"]["shape"] == "128x128"
    assert rows["MR_small.dcm"]["modality"] == "MR"
    assert rows["MR_small.dcm"]["shape"] == "64x64"
    for name in ("CT_small.dcm", "MR_small.dcm"):
        ds = pydicom.dcmread(real_files / name, stop_before_pixels=True)
        assert rows[name]["format"] == "dicom"
        assert rows[name]["patient"].startswith("pat-")
        text = Path(result.manifest).read_text()
        assert str(ds.PatientID) not in text and str(ds.PatientName) not in text
        for path in Path(result.manifest).parent.rglob("*"):  # no file in the output directory
            if path.is_file():
                data = path.read_bytes()
                assert str(ds.PatientID).encode() not in data, path
                assert str(ds.PatientName).encode() not in data, path
        if ds.get("InstitutionName"):
            # MR_small's institution is "TOSHIBA", a substring of its (kept, non-PHI)
            # Manufacturer "TOSHIBA_MEC": check that no manifest cell holds the institution
            cells = {cell for row in result.rows for cell in row.values()}
            assert str(ds.InstitutionName) not in cells
            assert rows[name]["center"].startswith("c-")
            assert rows[name]["institution"] == rows[name]["center"]


def test_real_nifti_accepted_as_3d(real_ingested):
    _, rows = real_ingested
    row = rows["anatomical.nii"]
    assert row["format"] == "nifti"
    assert row["shape"] == "33x41x25"
    assert row["modality"] == ""


def test_real_nifti_spacing(real_ingested):
    _, rows = real_ingested
    assert rows["anatomical.nii"]["spacing"] == "2x2x2"


def test_real_truncated_dicom_quarantined(real_ingested, real_files, quarantined_sources):
    result, rows = real_ingested
    assert "MR_truncated.dcm" not in rows
    quarantined = quarantined_sources(Path(result.quarantine).parent)
    assert [Path(p).name for p in quarantined] == ["MR_truncated.dcm"]
    row = next(iter(quarantined.values()))
    assert row["reason"] == "pixel data cannot be decoded (ValueError)"
    assert row["suffix"] == ".dcm"
    assert result.counts["seen"] == 4 and result.counts["accepted"] == 3


# --- Spacing written by medfm's own writers --------------------------------------------------


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_written_spacing_reaches_manifest(fmt, tmp_path):
    image = np.zeros((12, 8), dtype=np.uint8)
    if fmt == "nifti":
        write_nifti(image, tmp_path / "src" / "a.nii.gz", spacing=(0.5, 0.7))
    else:
        write_dicom(image, tmp_path / "src" / "a.dcm", {"Modality": "OT"}, spacing=(0.5, 0.7))
    result = ingest([tmp_path / "src"], tmp_path / "out", salt="s", progress=False)
    assert result.rows[0]["shape"] == "8x12"
    assert result.rows[0]["spacing"] == "0.7x0.5"  # x (column) spacing first, like the array


def test_center_from_dicom_identifier_never_leaks_phi(source, tmp_path):
    ingest([source / "raw"], tmp_path, salt="s", center="dicom:PatientID", progress=False)
    text = (tmp_path / "manifest.csv").read_text()
    assert "MRN" not in text
