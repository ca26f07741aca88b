"""No source path in any shareable output: a hospital export whose folders carry a patient's
name and MRN goes through ingest, pre-training, evaluation and the robustness audit, tracked on a
real MLflow server; neither string appears in any output file or MLflow entry, only in the
private source map."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medfm.cli.main import main
from medfm.data.synthetic import SyntheticSpec, write_dataset

pytestmark = pytest.mark.slow

NAME, MRN = "DOE^JOHN", "0012345"


def _export(root: Path) -> Path:
    """A source tree named after the patient: synthetic multi-center images, a real CT slice
    from pydicom and a truncated real MR file (quarantined)."""
    export = root / f"{NAME}_{MRN}"
    labels = write_dataset(export, SyntheticSpec(cases_per_center=6, images_per_case=2))
    (export / "CT").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), export / "CT" / f"IM0001_{MRN}")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), export / "CT" / f"{NAME}_2.dcm")
    return labels


def _leaks(folder: Path) -> list[str]:
    """Files under ``folder`` (outside private/) whose name or bytes hold the name or the MRN."""
    found = []
    for path in folder.rglob("*"):
        if "private" in path.relative_to(folder).parts or not path.is_file():
            continue
        data = path.read_bytes()
        for secret in (NAME, MRN, "DOE_JOHN", "DOE%5EJOHN"):
            if secret in str(path.relative_to(folder)) or secret.encode() in data:
                found.append(f"{path.relative_to(folder)} holds {secret}")
    return found


def _mlflow_entries(uri: str, experiment: str, download: Path) -> list[str]:
    """Every param, tag and metric key of the experiment's runs, and every artifact downloaded."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    texts = []
    for run in client.search_runs([exp.experiment_id]):
        texts += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
        texts += list(run.data.metrics)
        client.download_artifacts(run.info.run_id, "", str(download / run.info.run_id))
    return texts


def _slides(root: Path, real_svs: Path) -> Path:
    """A real H&E slide and a broken one, both named after the patient."""
    folder = root / f"{NAME}_{MRN}" / "pathology"
    folder.mkdir(parents=True)
    shutil.copy(real_svs, folder / f"{NAME}_{MRN}_HE.svs")
    (folder / f"{NAME}_broken.svs").write_bytes(b"II*\0" + b"\0" * 12)
    return folder


def test_no_output_and_no_mlflow_entry_names_the_patient(
    tmp_path, mlflow_server, real_svs, caplog, capsys
):
    caplog.set_level(logging.INFO)
    labels = _export(tmp_path / "exports")
    out, experiment = tmp_path / "out", "privacy-e2e"
    track = [f"tracking.uri={mlflow_server}", f"tracking.experiment={experiment}"]
    raw = str(tmp_path / "exports" / f"{NAME}_{MRN}")
    argv = ["ingest", raw, "--labels", str(labels), "--out", str(out / "ingest"), "--salt", "s"]
    assert main([*argv, "--no-progress"]) == 0
    manifest = out / "ingest" / "manifest.csv"
    tiny = ["model.depth=1", "train.max_steps=2", "train.batch_size=8", "train.progress=false"]
    tiny += ["data.cache=persistent"]  # the on-disk cache is a shareable output too
    assert (
        main(["pretrain", f"data.manifest={manifest}", f"out_dir={out / 'enc'}", *tiny, *track])
        == 0
    )
    common = ["--data", str(manifest), "--no-progress"]
    evaluate = ["evaluate", "--encoder", str(out / "enc"), "--out", str(out / "eval"), *common]
    assert main([*evaluate, *track]) == 0
    audit = ["robustness", "--encoder", str(out / "enc"), "--out", str(out / "rob"), "--k", "3"]
    assert main([*audit, *common, *track]) == 0
    slides = _slides(tmp_path / "exports", real_svs)
    tiles = ["ingest", str(slides), "--out", str(out / "slides"), "--max-tiles", "4"]
    assert main([*tiles, "--salt", "s", "--no-progress"]) == 0

    assert _leaks(out) == []
    assert list((out / "enc").rglob("cache*")), "no persistent cache was written"
    printed = capsys.readouterr()
    said = [r.getMessage() for r in caplog.records] + [printed.out, printed.err]
    assert [line for line in said if NAME in line or MRN in line] == []  # logs and console
    entries = _mlflow_entries(mlflow_server, experiment, tmp_path / "artifacts")
    assert len(entries) > 20  # params, tags and metrics of four runs were read
    assert [e for e in entries if NAME in e or MRN in e] == []
    assert _leaks(tmp_path / "artifacts") == []
    private = (out / "ingest" / "private" / "source_map.csv").read_text()
    assert NAME in private and MRN in private  # the site's re-identification key
    quarantine = (out / "ingest" / "quarantine.csv").read_text().splitlines()[1:]
    # the truncated MR file and the labels CSV that sits in the export folder
    assert sorted(line.split(",")[1] for line in quarantine) == [".csv", ".dcm"]
    report = json.loads((out / "ingest" / "report.json").read_text())
    ct_id = next(
        line.split(",")[0] for line in private.splitlines() if line.endswith(f"IM0001_{MRN}")
    )
    assert f"source:{ct_id}" in manifest.read_text()  # the real CT slice made it in
    assert report["rejected"] == 2 and "DOE" not in json.dumps(report)
    slide_report = json.loads((out / "slides" / "report.json").read_text())
    assert slide_report["accepted"] == 1 and slide_report["rejected"] == 1
    assert 0 < slide_report["formats"]["wsi_tile"] <= 4


def test_a_source_gone_after_ingest_is_named_by_its_id_not_its_path(tmp_path, capsys):
    labels = _export(tmp_path / "exports")
    out = tmp_path / "ingest"
    raw = str(tmp_path / "exports" / f"{NAME}_{MRN}")
    assert main(["ingest", raw, "--labels", str(labels), "--out", str(out), "--no-progress"]) == 0
    from medfm.data.ingestion.manifest import read_manifest

    rows = read_manifest(out / "manifest.csv")
    gone = next(r for r in rows if r["split"] == "train")
    Path(gone["path"]).unlink()
    argv = ["pretrain", f"data.manifest={out / 'manifest.csv'}", f"out_dir={tmp_path / 'enc'}"]
    code = main([*argv, "data.cache=none", "train.max_steps=1", "tracking.enabled=false"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"image {gone['id']} of the manifest is gone from its source" in err
    assert NAME not in err and MRN not in err
