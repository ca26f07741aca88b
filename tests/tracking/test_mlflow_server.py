"""A real ``mlflow server`` (sqlite backend, 127.0.0.1, a free port): log over HTTP, read back."""

import pytest
from mlflow.tracking import MlflowClient

from medfm.tracking.base import make_logger

pytestmark = pytest.mark.slow


def test_log_over_http_and_read_back(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    logger = make_logger({"enabled": True, "experiment": "server-test"}, tmp_path, run_name="r1")
    assert logger.tracking_uri == mlflow_server
    logger.log_params({"train.lr": 0.001, "model.name": "vit_tiny_patch16_224"})
    for step, loss in enumerate([1.0, 0.7, 0.5], start=1):
        logger.log_metrics({"train/loss": loss}, step=step)
    note = tmp_path / "summary.json"
    note.write_text('{"linear_auc": 0.9}')
    logger.log_artifact(note, "reports")
    child = logger.child("evaluate")
    child.log_metrics({"eval/linear_test_auc": 0.91})
    child.close()
    logger.close()

    client = MlflowClient(mlflow_server)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.001", "model.name": "vit_tiny_patch16_224"}
    history = client.get_metric_history(logger.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.7), (3, 0.5)]
    assert [a.path for a in client.list_artifacts(logger.run_id, "reports")] == [
        "reports/summary.json"
    ]
    nested = client.get_run(child.run_id)
    assert nested.data.tags["mlflow.parentRunId"] == logger.run_id
    assert nested.data.metrics == {"eval/linear_test_auc": 0.91}
