"""A real ``mlflow server`` (sqlite backend, 127.0.0.1, a free port): log over HTTP, read back."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from medfm.tracking.base import make_logger

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log_path, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(
        f"mlflow server not healthy after {timeout}s: {log_path.read_text()[-2000:]}"
    )


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log_path = root / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log_path)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


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
