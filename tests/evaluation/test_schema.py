"""``metrics.json`` has exactly the shape documented in :mod:`medfm.evaluation.run`, whether
``medfm evaluate`` (through the command line) or ``medfm demo`` wrote it."""

import csv
import json
import math

import pytest

from medfm.cli.main import main
from medfm.demo import run_demo

pytestmark = pytest.mark.slow

SCALARS = ("test_auc", "test_acc", "test_bacc", "test_f1", "test_ece")
ROWS = {"linear", "knn", "random:linear", "random:knn", "pixels:linear"}


def _is_float(value) -> bool:
    return isinstance(value, float) and (math.isfinite(value) or math.isnan(value))


def check_entry(
    entry: dict, protocol: str, centers: dict[str, set[str]], twin: dict | None = None
) -> None:
    """One single-label protocol entry, against the documented table; ``centers["test"]`` are
    the centers of the test split, ``centers["all"]`` those loco holds out (every labelled row
    of a held-out center is its test set); ``twin`` is the same protocol's entry of the row's
    ``random:`` baseline, if it has one."""
    centers = centers["all" if protocol == "loco" else "test"]
    keys = {"n_seeds", "test_auc_ci95", *SCALARS, *(f"{k}_std" for k in SCALARS)}
    if twin is not None and protocol == "full":
        keys |= {"gain_vs_random", "gain_vs_random_ci95"}
        assert entry["gain_vs_random"] == pytest.approx(entry["test_auc"] - twin["test_auc"])
        lo, hi = entry["gain_vs_random_ci95"]
        assert -1.0 <= lo <= hi <= 1.0
    if protocol == "loco":
        keys |= {"n_folds", "per_center"}
    elif len(centers) > 1:
        keys |= {"per_center"}
    assert set(entry) == keys, (protocol, set(entry) ^ keys)
    assert all(_is_float(entry[k]) for k in keys if k.startswith("test_") and k != "test_auc_ci95")
    assert isinstance(entry["n_seeds"], int) and entry["n_seeds"] >= 1
    lo, hi = entry["test_auc_ci95"]
    assert _is_float(lo) and _is_float(hi) and lo <= entry["test_auc"] <= hi
    if "per_center" in entry:
        assert set(entry["per_center"]) == centers
        for value in entry["per_center"].values():
            assert set(value) == {"test_auc", "test_acc", "n"}
            assert _is_float(value["test_auc"]) and _is_float(value["test_acc"])
            assert isinstance(value["n"], int) and value["n"] > 0
    if protocol == "loco":
        assert entry["n_folds"] == len(centers)


def check_metrics(metrics: dict, rows: set[str], protocols: set[str], centers: dict) -> None:
    """Rows, then protocols, then entries, all exactly as documented."""
    assert set(metrics) == rows
    for row, by_protocol in metrics.items():
        assert set(by_protocol) == protocols, row
        twin = metrics.get(f"random:{row}")
        for protocol, entry in by_protocol.items():
            check_entry(entry, protocol, centers, twin[protocol] if twin else None)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("schema_demo")
    summary = run_demo(out, quick=True, tracking=False, progress=False)
    return out, summary


def test_demo_metrics_json_has_the_documented_shape(demo):
    out, summary = demo
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    check_metrics(metrics, ROWS, {"full"}, _centers(out))
    # the summary is read from it
    assert summary["linear_auc"] == metrics["linear"]["full"]["test_auc"]
    assert summary["random_init_linear_auc"] == metrics["random:linear"]["full"]["test_auc"]
    assert summary["pixels_linear_auc"] == metrics["pixels:linear"]["full"]["test_auc"]
    robust = json.loads((out / "robustness" / "robustness.json").read_text())
    (entry,) = robust["encoders"].values()
    assert summary["robustness_index"] == entry["robustness_index"]
    assert summary["robustness_index_normalized"] == entry["robustness_index_normalized"]


def _centers(out) -> dict[str, set[str]]:
    with open(out / "ingest" / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"]]
    return {
        "test": {r["center"] for r in rows if r["split"] == "test"},
        "all": {r["center"] for r in rows},
    }


def test_evaluate_command_metrics_json_has_the_documented_shape(demo, tmp_path):
    out, _ = demo
    code = main(
        [
            "evaluate",
            "--encoder",
            str(out / "pretrain"),
            "--data",
            str(out / "ingest" / "manifest.csv"),
            "--out",
            str(tmp_path),
            "--heads",
            "linear,knn",
            "--protocol",
            "full",
            "--protocol",
            "fewshot:2",
            "--protocol",
            "loco",
            "--seeds",
            "2",
            "--no-tracking",
            "--no-progress",
            "eval.bootstrap=20",
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    check_metrics(metrics, ROWS, {"full", "fewshot:2", "loco"}, _centers(out))
    assert metrics["linear"]["fewshot:2"]["n_seeds"] == 2  # resampled: repeated
    assert metrics["linear"]["full"]["n_seeds"] == 1  # deterministic head and protocol
