"""Ingestion of MedMNIST files, bad NIfTI files, labels files, and center-level splits."""

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medfm.config import load_config
from medfm.data.datasets import build_dataset
from medfm.data.ingestion.ingest import ingest
from medfm.data.ingestion.labels import read_labels
from medfm.data.synthetic import SyntheticSpec, write_dataset

BREAST = Path(__file__).parents[4] / "shared" / "data" / "breastmnist.npz"
pytestmark = pytest.mark.filterwarnings("ignore:.*nvImageCodec")


def test_real_breastmnist_keeps_official_splits_and_loads():
    if not BREAST.is_file():
        pytest.skip(f"real BreastMNIST not found at {BREAST} (see shared/data/README.md)")
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        result = ingest([BREAST], out, salt="s", progress=False)
        assert result.counts["splits"] == {"train": 546, "val": 78, "test": 156}
        assert result.counts["seen"] == 1 and result.counts["accepted"] == 1
        test_labels = [r["label"] for r in result.rows if r["split"] == "test"]
        assert (test_labels.count("0"), test_labels.count("1")) == (42, 114)
        first = result.rows[0]
        assert first["format"] == "medmnist" and first["shape"] == "28x28"
        ds = build_dataset(result.rows[:3], load_config(None, ["data.image_size=28"]).data)
        raw = np.load(BREAST)["train_images"][0]
        np.testing.assert_allclose(ds[0]["image"][0].numpy(), raw.T / 255.0, atol=1e-6)


def test_medmnist_3d_and_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "organ3d.npz",
        train_images=rng.integers(0, 255, (3, 28, 28, 28), dtype=np.uint8),
        train_labels=np.array([[1], [2], [0]]),
        test_images=rng.integers(0, 255, (2, 28, 28, 28), dtype=np.uint8),
        test_labels=np.array([[0], [1]]),
    )
    np.savez(
        tmp_path / "chest.npz",
        train_images=rng.integers(0, 255, (2, 28, 28), dtype=np.uint8),
        train_labels=np.array([[1, 0, 1], [0, 0, 0]]),
    )
    result = ingest([tmp_path], tmp_path / "out", salt="s", progress=False)
    rows = {
        Path(r["path"].split("#")[0]).name + "#" + r["path"].split("#")[1]: r for r in result.rows
    }
    assert rows["organ3d.npz#test/1"]["shape"] == "28x28x28"
    assert rows["organ3d.npz#test/1"]["split"] == "test"
    assert rows["chest.npz#train/0"]["label"] == "1;0;1"
    assert result.counts["rows"] == 7 and result.counts["accepted"] == 2


def test_nan_and_truncated_nifti_quarantined(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    volume = np.ones((4, 4, 3), dtype=np.float32)
    volume[1, 2, 0] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), src / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), src / "ok.nii.gz")
    data = gzip.compress(gzip.decompress((src / "ok.nii.gz").read_bytes()))
    (src / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    result = ingest([src], tmp_path / "out", salt="s", progress=False)
    assert [Path(r["path"]).name for r in result.rows] == ["ok.nii.gz"]
    assert result.rows[0]["orientation"] == "RAS" and result.rows[0]["spacing"] == "1x1x1"
    by_reason = result.counts["rejected_by_reason"]
    assert by_reason["image contains NaN or infinite values"] == 1
    assert sum(n for r, n in by_reason.items() if r.startswith("nifti reader failed")) == 1


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    labels = write_dataset(root, SyntheticSpec(cases_per_center=4, images_per_case=1))
    return root, labels


def test_labels_with_missing_and_duplicate_keys_are_quarantined(small, tmp_path):
    root, labels = small
    lines = labels.read_text().splitlines()
    bad = root / "labels_bad.csv"
    first = lines[1].split(",")
    rows = [
        lines[0],
        *lines[1:],
        ",".join(["", *first[1:]]),
        ",".join([str((root / first[0]).resolve()), *first[1:]]),
    ]
    bad.write_text("\n".join(rows) + "\n")
    table = read_labels(bad, "path")
    assert [r["reason"] for r in table.rejected] == [
        "labels key 'path' appears 2 times",
        "labels row has an empty 'path'",
        "labels key 'path' appears 2 times",
    ]
    assert [r["path"] for r in table.rejected] == [
        f"{bad}:2",
        f"{bad}:{len(lines) + 1}",
        f"{bad}:{len(lines) + 2}",
    ]
    result = ingest([root / "raw"], tmp_path / "out", labels=bad, salt="s", progress=False)
    assert result.counts["labels_rejected_rows"] == 3
    assert result.counts["rows_without_label"] == 1  # the image whose key was duplicated
    quarantine = (tmp_path / "out" / "quarantine.csv").read_text()
    assert "appears 2 times" in quarantine and "empty 'path'" in quarantine


def test_join_on_patient_pseudonym_and_unmatched_reported(small, tmp_path):
    root, _ = small
    first = ingest([root / "raw"], tmp_path / "a", salt="s", progress=False)
    patients = sorted({r["patient"] for r in first.rows})
    table = tmp_path / "by_patient.csv"
    table.write_text(
        "patient,grade\n"
        + "".join(f"{p},{i % 2}\n" for i, p in enumerate(patients[:5]))
        + "pat-unknown,1\n"
    )
    result = ingest(
        [root / "raw"],
        tmp_path / "b",
        labels=table,
        label_key="patient",
        label_column="grade",
        salt="s",
        progress=False,
    )
    graded = {r["patient"]: r["label"] for r in result.rows if r["label"] != ""}
    assert graded == {p: str(i % 2) for i, p in enumerate(patients[:5])}
    assert result.counts["labels_unmatched_rows"] == 1
    assert result.counts["rows_without_label"] == len(patients) - 5


def test_center_level_split_holds_out_whole_centers(small, tmp_path):
    root, labels = small
    result = ingest(
        [root / "raw"], tmp_path, labels=labels, salt="s", test_centers=["center_c"], progress=False
    )
    for row in result.rows:
        assert (row["split"] == "test") == (row["center"] == "center_c")
    assert {r["split"] for r in result.rows} == {"train", "val", "test"}


def test_dataset_caches_give_identical_images(small, tmp_path):
    root, labels = small
    rows = ingest([root / "raw"], tmp_path, labels=labels, salt="s", progress=False).rows[:4]
    base = ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}"]
    images = {}
    for cache in ("none", "memory", "persistent"):
        ds = build_dataset(rows, load_config(None, [*base, f"data.cache={cache}"]).data)
        images[cache] = torch.stack([ds[i]["image"] for i in range(len(ds))])
    torch.testing.assert_close(images["none"], images["memory"])
    torch.testing.assert_close(images["none"], images["persistent"])
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 4
    assert not any("ZZSYNTH" in p.name or "MRN" in p.name for p in cached)
    cached[0].write_bytes(cached[0].read_bytes()[:50])  # a corrupt cache entry
    os.utime(cached[0])
    ds = build_dataset(rows, load_config(None, [*base, "data.cache=persistent"]).data)
    with pytest.warns(UserWarning, match="[Cc]orrupt cache"):
        rebuilt = torch.stack([ds[i]["image"] for i in range(len(ds))])
    torch.testing.assert_close(rebuilt, images["none"])
