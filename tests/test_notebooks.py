"""Notebooks use the public API only; each is executed in a real Jupyter kernel so it cannot rot.

A notebook reports what its checks need either in its own last cell tagged ``result`` (it prints
one JSON object), or, for notebooks without one, through a report cell appended here in memory.
Every notebook must have its checks below, and is stored with its outputs stripped.
"""

import csv
import json
import math
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
# Appended to a notebook without a `result` cell: reports what its checks need from the kernel.
REPORT_CELLS = {
    "quickstart.ipynb": """
import json as _json
print(_json.dumps({
    "linear_test_auc": heads["linear"]["test_auc"],
    "metric_heads": sorted(metrics),
    "linear_protocols": sorted(metrics["linear"]),
    "fewshot5_seeds": metrics["linear"]["fewshot:5"]["n_seeds"],
}))
""",
}


def _result_cell(notebook) -> int | None:
    tagged = [i for i, c in enumerate(notebook.cells) if "result" in c.metadata.get("tags", [])]
    assert len(tagged) <= 1, "at most one cell may be tagged `result`"
    return tagged[0] if tagged else None


def _run_in_kernel(path: Path, cwd: Path) -> dict:
    notebook = nbformat.read(path, as_version=4)
    index = _result_cell(notebook)
    if index is None:
        assert path.name in REPORT_CELLS, f"{path.name}: tag a cell `result` or add a report cell"
        notebook.cells.append(nbformat.v4.new_code_cell(REPORT_CELLS[path.name]))
        index = len(notebook.cells) - 1
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    streams = [o["text"] for o in notebook.cells[index].outputs if o.get("name") == "stdout"]
    return json.loads("".join(streams))


def _check_quickstart(report: dict, tmp_path: Path) -> None:
    assert 0.5 < report["linear_test_auc"] <= 1.0
    assert (tmp_path / "runs/notebook/robustness/report.html").is_file()  # the robustness card
    assert report["linear_protocols"] == ["fewshot:1", "fewshot:5", "full", "loco"]
    assert report["fewshot5_seeds"] == 3
    assert {"random:linear", "pixels:linear"} <= set(report["metric_heads"])
    assert (tmp_path / "runs/notebook/evaluate/label_efficiency.png").is_file()


def _check_own_data(report: dict, tmp_path: Path) -> None:
    work = Path(report["work_dir"])
    assert work.is_relative_to(tmp_path)  # written to a temporary folder, not the repository
    files = [p for p in (work / "my_study" / "raw").rglob("*") if p.is_file()]
    assert report["files_written"] == len(files)
    with open(report["manifest"], newline="") as f:
        manifest = list(csv.DictReader(f))
    with open(Path(report["manifest"]).parent / "quarantine.csv", newline="") as f:
        quarantine = list(csv.DictReader(f))
    # each file written is one manifest row (every DICOM here is its own series) or quarantined
    assert len(manifest) == report["manifest_rows"] == report["images_written"]
    assert len(quarantine) == report["quarantined"] == 2
    assert len(manifest) + len(quarantine) == len(files)
    evaluate = Path(report["evaluate_dir"])
    metrics = json.loads((evaluate / "metrics.json").read_text())
    assert {"linear", "knn", "random:linear", "pixels:linear"} <= set(metrics)
    protocols = {"full", "fewshot:1", "fewshot:5", "fraction:0.25", "fraction:0.5"}
    assert set(metrics["linear"]) == protocols
    for head, protocols in metrics.items():
        for protocol, entry in protocols.items():
            auc, (low, high) = entry["test_auc"], entry["test_auc_ci95"]
            assert 0.0 <= auc <= 1.0, (head, protocol, auc)
            assert low <= auc <= high, (head, protocol, low, auc, high)
    headline = report["headline"]
    assert headline["test_auc"] == pytest.approx(metrics["linear"]["fewshot:5"]["test_auc"])
    assert metrics["linear"]["fewshot:5"]["n_seeds"] == 3
    assert (evaluate / "label_efficiency.png").is_file()


def _check_robustness_audit(report: dict, tmp_path: Path) -> None:
    audit_dir = Path(report["audit_dir"])
    assert audit_dir.is_relative_to(tmp_path)
    saved = json.loads((audit_dir / "robustness.json").read_text())
    names = list(saved["encoders"])
    assert len(names) == len(report["encoders"]) == 3, names
    timm_name = report["timm_spec"].removeprefix("timm:")
    assert any(timm_name in name for name in names), names  # the timm encoder has its entry
    for name, entry in saved["encoders"].items():
        ri, (low, high) = entry["robustness_index"], entry["robustness_index_ci95"]
        assert math.isfinite(ri) and ri >= 0, (name, ri)
        assert math.isfinite(low) and math.isfinite(high) and low <= high, (name, low, high)
        assert 0.0 <= entry["robustness_index_normalized"] <= 1.0, name
        assert report["robustness_index"][name] == pytest.approx(ri)
    html = (audit_dir / "report.html").read_text()
    assert timm_name in html and "data:image/png;base64," in html


CHECKS = {
    "quickstart.ipynb": _check_quickstart,
    "own_data.ipynb": _check_own_data,
    "robustness_audit.ipynb": _check_robustness_audit,
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs_and_has_checks(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert path.name in CHECKS, f"{path.name} has no checks in {Path(__file__).name}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch, record_property):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the kernel's tempfile.mkdtemp() lands here
    start = time.monotonic()
    report = _run_in_kernel(path, tmp_path)
    elapsed = time.monotonic() - start
    record_property("runtime_s", round(elapsed, 1))
    print(f"{path.name}: executed in {elapsed:.1f} s")
    CHECKS[path.name](report, tmp_path)
