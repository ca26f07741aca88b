"""End to end: ``medfm demo --quick`` as a user runs it, in a subprocess."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def check_robustness_schema(results: dict) -> None:
    """tests/robustness/test_schema.py's ``check_results``: the one documented robustness.json
    shape (test files are no package, so it is loaded by path)."""
    path = Path(__file__).parent / "robustness" / "test_schema.py"
    spec = importlib.util.spec_from_file_location("robustness_schema", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.check_results(results)


def _demo(out: Path, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medfm",
            "demo",
            "--quick",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "medfm demo summary" in result.stdout
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, _demo(out)


def test_summary_values_are_finite_and_in_range(demo_run):
    _, summary = demo_run
    for key in ("linear_auc", "knn_auc", "random_init_linear_auc"):
        assert 0.5 < summary[key] <= 1.0, key  # better than chance on 4 balanced classes
    assert math.isfinite(summary["robustness_index"]) and summary["robustness_index"] > 0
    assert 0.0 <= summary["robustness_index_normalized"] <= 1.0
    assert summary["images"] == 96 and summary["quarantined"] == 0
    assert summary["pretrain_steps"] == 60
    lo, hi = summary["linear_auc_ci95"]
    assert lo <= summary["linear_auc"] <= hi
    assert 0.0 < summary["chance_robustness_index"] and summary["robustness_k"] == 10
    assert (out_of(summary) / "robustness" / "report.html").is_file()
    check_robustness_schema(
        json.loads((out_of(summary) / "robustness" / "robustness.json").read_text())
    )


def out_of(summary: dict) -> Path:
    return Path(summary["metrics"]).parents[1]


def test_mlflow_store_holds_the_run_with_metrics(demo_run):
    out, summary = demo_run
    assert summary["tracking_uri"] == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    # logged by medfm evaluate and medfm robustness themselves, and by the demo from their files
    assert metrics["eval/linear/full/test_auc"] == pytest.approx(summary["linear_auc"])
    assert metrics["eval/random_linear/full/test_auc"] == pytest.approx(
        summary["random_init_linear_auc"]
    )
    assert metrics["robustness/ri_ratio"] == pytest.approx(summary["robustness_index"])
    assert metrics["demo/knn_auc"] == pytest.approx(summary["knn_auc"])
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert {c.data.params["head"] for c in children} == {
        "linear",
        "knn",
        "random:linear",
        "random:knn",
        "pixels:linear",
    }
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6  # every 10 steps
    assert run.data.params["train.max_steps"] == "60"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "encoder", "evaluation", "robustness"} <= artifacts


def test_no_phi_outside_the_dicom_files(demo_run):
    out, _ = demo_run
    phi = set()
    for dcm in out.rglob("*.dcm"):
        header = pydicom.dcmread(dcm, stop_before_pixels=True)
        phi |= {str(header.PatientName), str(header.PatientID)}
    assert len(phi) > 10
    checked = 0
    for path in out.rglob("*"):
        if path.is_file() and path.suffix != ".dcm":
            data = path.read_bytes()
            leaked = [value for value in phi if value.encode() in data]
            assert not leaked, f"{path} contains {leaked}"
            checked += 1
    assert checked > 20 and (out / "mlflow.db").is_file()


def test_strong_center_signature_lowers_the_robustness_index(tmp_path):
    weak = _demo(tmp_path / "s0", "--center-strength", "0", "--no-tracking")
    strong = _demo(tmp_path / "s1", "--center-strength", "1", "--no-tracking")
    assert strong["robustness_index"] < weak["robustness_index"]
    assert strong["robustness_index_normalized"] < weak["robustness_index_normalized"]
    assert weak["mlflow_run_id"] is None


def test_evaluate_and_robustness_commands_on_the_demo_encoder(demo_run, tmp_path):
    from medfm.cli.main import main

    out, summary = demo_run
    encoder, manifest = out / "pretrain", out / "ingest" / "manifest.csv"
    assert (
        main(
            [
                "evaluate",
                "--encoder",
                str(encoder),
                "--data",
                str(manifest),
                "--out",
                str(tmp_path / "eval"),
                "--heads",
                "linear,knn",
                "--no-tracking",
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["linear"]["full"]["test_auc"] == pytest.approx(summary["linear_auc"])
    assert metrics["random:linear"]["full"]["test_auc"] == pytest.approx(
        summary["random_init_linear_auc"]
    )
    assert (
        main(
            [
                "robustness",
                "--encoder",
                str(encoder),
                "--encoder",
                f"random:{encoder}",
                "--data",
                str(manifest),
                "--out",
                str(tmp_path / "rob"),
                "--k",
                "5",
                "--bootstrap",
                "20",
                "--no-tracking",
                "--no-progress",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    check_robustness_schema(results)
    assert set(results["encoders"]) == {"pretrain", "random:pretrain"}
    assert (tmp_path / "rob" / "report.html").stat().st_size > 10_000
