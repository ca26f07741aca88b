"""Notebooks use the public API only; run their code cells so they cannot rot."""

import json
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    namespace: dict = {}
    exec(compile(code, str(path), "exec"), namespace)  # noqa: S102
    assert 0.5 < namespace["heads"]["linear"]["test_auc"] <= 1.0
    assert os.path.isfile(tmp_path / "runs/notebook/robustness/embedding_map.png")
    metrics = namespace["metrics"]
    assert set(metrics["linear"]) == {"full", "fewshot:1", "fewshot:5", "loco"}
    assert metrics["linear"]["fewshot:5"]["n_seeds"] == 3
    assert set(metrics) >= {"random:linear", "pixels:linear"}
    assert os.path.isfile(tmp_path / "runs/notebook/evaluate/label_efficiency.png")
