"""Notebooks use the public API only; each is executed in a real Jupyter kernel so it cannot rot."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
# Appended to the notebook in memory: reports what the checks below need from the kernel.
REPORT_CELL = """
import json as _json
print(_json.dumps({
    "linear_test_auc": heads["linear"]["test_auc"],
    "metric_heads": sorted(metrics),
    "linear_protocols": sorted(metrics["linear"]),
    "fewshot5_seeds": metrics["linear"]["fewshot:5"]["n_seeds"],
}))
"""


def _run_in_kernel(path: Path, cwd: Path) -> dict:
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    streams = [o["text"] for o in notebook.cells[-1].outputs if o.get("name") == "stdout"]
    return json.loads("".join(streams))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report = _run_in_kernel(path, tmp_path)
    assert 0.5 < report["linear_test_auc"] <= 1.0
    assert (tmp_path / "runs/notebook/robustness/embedding_map.png").is_file()
    assert report["linear_protocols"] == ["fewshot:1", "fewshot:5", "full", "loco"]
    assert report["fewshot5_seeds"] == 3
    assert {"random:linear", "pixels:linear"} <= set(report["metric_heads"])
    assert (tmp_path / "runs/notebook/evaluate/label_efficiency.png").is_file()
