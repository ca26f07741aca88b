"""``medfm curate`` end to end: real NIfTI volumes (nibabel's and nilearn's) and a 2D manifest
with planted duplicates, through ingest, curation and a few pre-training steps on the reduced
manifest; bad input; tracking on a real server; the threshold sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from nibabel.testing import data_path

from medfm.cli.main import main
from medfm.config import load_config
from medfm.curation.run import curate
from medfm.data.ingestion.ingest import ingest
from medfm.data.ingestion.manifest import read_manifest
from medfm.data.sources.loading import load_path
from medfm.data.synthetic import SyntheticSpec, write_dataset
from medfm.train.pretrain import pretrain

pytestmark = pytest.mark.slow
NAME = "DOE^JOHN_0012345"
TINY = [
    "model.depth=1",
    "data.image_size=32",
    "train.batch_size=4",
    "train.max_steps=2",
    "train.warmup_steps=1",
    "train.progress=false",
    "tracking.enabled=false",
]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """Real volumes in a folder named after a patient: nibabel's anatomical.nii, the two
    volumes of example4d.nii.gz, and a one-slice volume cut from anatomical.nii."""
    root = tmp_path_factory.mktemp("vol")
    src = root / NAME
    src.mkdir()
    shutil.copy(Path(data_path) / "anatomical.nii", src / "anatomical.nii")
    four_d = nib.load(Path(data_path) / "example4d.nii.gz")
    for t in range(2):
        volume = np.asarray(four_d.dataobj[..., t], dtype=np.float32)
        nib.Nifti1Image(volume, four_d.affine).to_filename(src / f"example4d_{t}.nii.gz")
    anatomical = nib.load(src / "anatomical.nii")
    one = np.asarray(anatomical.dataobj, np.float32)[..., 10:11]
    nib.Nifti1Image(one, anatomical.affine).to_filename(src / "one_slice.nii.gz")
    return ingest([src], root / "ingest", salt="s", progress=False).manifest


def _cfg(*extra: str):
    return load_config(None, list(extra))


def test_volumes_are_reduced_slice_by_slice_and_the_kept_slices_train(volumes, tmp_path):
    out = tmp_path / "curated"
    report = curate(volumes, out, _cfg().data, "dhash", 6, "volume", progress=False)
    rows = read_manifest(volumes)
    depth = {r["id"]: int(r["shape"].split("x")[-1]) for r in rows}
    assert report["seen"] == sum(depth.values()) and 0 < report["kept"] < report["seen"]
    assert {k: v["seen"] for k, v in report["per_volume"].items()} == depth
    assert report["notes"] == {"volumes with one slice (kept)": 1}
    kept = read_manifest(out / "manifest.csv")
    assert len(kept) == report["kept"] == report["rows"]["written"]
    assert all(row["format"] == "nifti" for row in kept)
    row = next(r for r in kept if r["id"].startswith(rows[0]["id"]))
    index = int(row["id"].rsplit("-z", 1)[1])  # the slice holds the volume's values there
    volume = load_path(rows[0]["path"])
    np.testing.assert_allclose(load_path(row["path"])[0].numpy(), volume[0, :, :, index].numpy())
    assert NAME not in (out / "manifest.csv").read_text() + (out / "curation.json").read_text()
    assert (out / "kept_fraction.png").stat().st_size > 0 and (out / "pairs.png").is_file()

    cfg = _cfg(*TINY, f"data.manifest={out / 'manifest.csv'}", f"out_dir={tmp_path / 'enc'}")
    _, result = pretrain(cfg)
    assert result.steps == 2 and np.isfinite(result.final_loss)


def test_dataset_scope_removes_exact_copies_of_2d_images(tmp_path):
    labels = write_dataset(tmp_path / "d", SyntheticSpec(cases_per_center=3, images_per_case=1))
    raw = tmp_path / "d" / "raw"
    originals = sorted(p for p in raw.rglob("*") if p.is_file())  # PNG, DICOM and NIfTI
    copies = [p for p in originals if p.suffix != ".dcm"]  # a DICOM copy keeps its UIDs
    for image in copies:  # planted duplicates: byte copies under other names
        shutil.copy(image, image.with_name(f"copy_{image.name}"))
    manifest = ingest([raw], tmp_path / "i", labels=labels, salt="s", progress=False).manifest
    n = len(read_manifest(manifest))
    out = tmp_path / "curated"
    report = curate(manifest, out, _cfg().data, "dhash", 0, "dataset", progress=False)
    assert n == len(originals) + len(copies) and report["seen"] == n
    assert report["kept"] == len(originals)  # one of each pair, and every original is distinct
    kept = read_manifest(out / "manifest.csv")
    assert len(kept) == report["kept"]
    assert (out / "private" / "source_map.csv").is_file()  # rows still read from their sources
    assert {"id", "path", "patient", "label", "split"} <= set(kept[0])

    cfg = _cfg(*TINY, f"data.manifest={out / 'manifest.csv'}", f"out_dir={tmp_path / 'enc'}")
    _, result = pretrain(cfg)
    assert result.steps == 2


def test_embedding_method_finds_the_copies_with_any_encoder_spec(tmp_path):
    from medfm.curation.embed import make_embedder

    labels = write_dataset(tmp_path / "d", SyntheticSpec(cases_per_center=2, images_per_case=1))
    pngs = sorted((tmp_path / "d" / "raw").rglob("*.png"))
    for png in pngs:
        shutil.copy(png, png.with_name(f"copy_{png.name}"))
    raw = tmp_path / "d" / "raw"
    manifest = ingest([raw], tmp_path / "i", labels=labels, salt="s", progress=False).manifest
    n = len(read_manifest(manifest))
    data = _cfg("model.depth=1", "data.image_size=32", "data.channels=1").data
    embed = make_embedder("random:vit_tiny_patch16_224", data, image_size=32)
    report = curate(manifest, tmp_path / "c", data, "embedding", 0.9999, "dataset", embed, False)
    assert report["seen"] == n and report["kept"] == n - len(pngs)
    with pytest.raises(ValueError, match="needs --encoder"):
        curate(manifest, tmp_path / "e", data, "embedding", 0.9, "dataset", None, False)


def test_bad_input_gets_a_clear_error_or_a_counted_note(volumes, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("id,path\n")
    with pytest.raises(ValueError, match="no rows"):
        curate(empty, tmp_path / "a", _cfg().data)
    with pytest.raises(ValueError, match="out of range for dhash"):
        curate(volumes, tmp_path / "b", _cfg().data, "dhash", 70)
    with pytest.raises(ValueError, match="use --scope volume"):
        curate(volumes, tmp_path / "c", _cfg().data, "ssim", 0.9, "dataset")
    rows = read_manifest(volumes)
    gone = Path(rows[1]["path"])
    moved = gone.with_suffix(".moved")
    gone.rename(moved)
    try:
        report = curate(volumes, tmp_path / "d", _cfg().data, "every_n", 3, progress=False)
    finally:
        moved.rename(gone)
    assert report["rows"]["unreadable"] == 1
    quarantine = (tmp_path / "d" / "quarantine.csv").read_text()
    assert rows[1]["id"] in quarantine and gone.name not in quarantine


def test_cli_curates_with_tracking_and_sweeps(volumes, tmp_path, mlflow_server, capsys):
    track = [f"tracking.uri={mlflow_server}", "tracking.experiment=curate"]
    out = tmp_path / "cli"
    argv = ["curate", str(volumes), "--out", str(out), "--method", "ssim", "--no-progress"]
    assert main([*argv, *track]) == 0
    report = json.loads((out / "curation.json").read_text())
    assert "Kept" in capsys.readouterr().out and report["threshold"] == 0.9
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("curate").experiment_id])
    assert run.data.metrics["curation/kept"] == report["kept"]
    names = {a.path for a in client.list_artifacts(run.info.run_id, "curation")}
    assert {"curation/curation.json", "curation/manifest.csv", "curation/pairs.png"} <= names

    sweep = ["curate", str(volumes), "--out", str(tmp_path / "sweep"), "--sweep", "--no-progress"]
    assert main(sweep) == 0
    printed = capsys.readouterr().out
    table = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert set(table) == {"dhash", "ssim", "mi", "every_n"} and "dhash" in printed
    dhash = [table["dhash"][t] for t in sorted(table["dhash"], key=float)]
    ssim = [table["ssim"][t] for t in sorted(table["ssim"], key=float)]
    assert dhash == sorted(dhash, reverse=True) and dhash[-1] < dhash[0]  # looser: fewer kept
    assert ssim == sorted(ssim)  # a higher similarity bar drops fewer slices
