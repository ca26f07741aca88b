"""Tracking cannot stop training: a real ``mlflow server`` that is down at the start, or killed
mid-run, costs nothing but a warning; ``medfm sync`` then sends exactly what was missed."""

import argparse
import json
import logging
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medfm.cli import sync_cmd
from medfm.config import load_config
from medfm.tracking.base import make_logger
from medfm.tracking.spool import Journal, find_journals, sync
from medfm.train.pretrain import pretrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A MedMNIST-layout .npz of 16x16 grey images."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "images.npz"
    x = rng.integers(0, 255, size=(16, 16, 16), dtype=np.uint8)
    y = (np.arange(16) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez(
        path,
        train_images=x[:12],
        train_labels=y[:12],
        val_images=x[12:14],
        val_labels=y[12:14],
        test_images=x[14:],
        test_labels=y[14:],
    )
    return path


def _cfg(images, out, uri, *extra):
    return load_config(
        None,
        [
            f"data.path={images}",
            f"out_dir={out}",
            "model.depth=1",
            "data.image_size=16",
            "train.batch_size=4",
            "train.max_steps=8",
            "train.warmup_steps=1",
            "train.log_every=1",
            "train.checkpoint_every=4",
            "train.progress=false",
            f"tracking.uri={uri}",
            "tracking.experiment=spool",
            *extra,
        ],
    )


def _pretrain(cfg, monitor=None):
    """As ``medfm pretrain`` does: a logger, the run, close."""
    logger = make_logger(cfg.tracking, cfg.out_dir, run_name="pretrain")
    out, result = pretrain(cfg, logger, monitor=monitor)
    logger.close()
    return logger, out, result


def _tracking_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("medfm.tracking") and r.levelno >= logging.WARNING
    ]


def _assert_history_is_metrics_jsonl(client, run_id, out) -> int:
    """Every metric of ``metrics.jsonl`` has, in the run, the same values at the same steps and
    nothing else; the number of values compared."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = {k for r in records for k in r if k != "step"}
    assert "train/loss" in keys
    n = 0
    for key in sorted(keys):
        expected = sorted((r["step"], r[key]) for r in records if key in r)
        actual = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert actual == expected, key
        n += len(expected)
    return n


def _sync(out, capsys) -> list[dict]:
    """``medfm sync OUT`` through its command module; the per-journal results."""
    assert sync_cmd.run(argparse.Namespace(out=str(out), tracking_uri=None, timeout=30.0)) == 0
    printed = capsys.readouterr().out
    assert "left unsent" in printed and "0 left unsent" in printed
    return sync(out)  # a second sync: what it sent (nothing, when the first sent everything)


def test_server_down_at_start_then_sync_sends_everything_once(
    images, tmp_path, mlflow_servers, caplog, capsys
):
    caplog.set_level(logging.INFO)
    port = mlflow_servers.free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "run"
    started = time.perf_counter()
    logger, _, result = _pretrain(_cfg(images, out, url))
    assert time.perf_counter() - started < 60
    assert result.steps == 8 and (out / "encoder.safetensors").is_file()
    assert logger.run_id is None and logger.unsent > 0  # nothing reached a server
    warnings = _tracking_warnings(caplog)
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "medfm sync" in warnings[0]

    mlflow_servers.start(tmp_path / "server", port)
    assert [r["sent"] for r in _sync(out, capsys)] == [0]  # the second sync sent nothing
    (journal,) = find_journals(out)
    run_id = Journal.load(journal).run_id
    client = MlflowClient(url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain"
    assert run.data.params["train.max_steps"] == "8"
    assert _assert_history_is_metrics_jsonl(client, run_id, out) >= 8
    assert client.get_metric_history(run_id, "pretrain/final_loss")[0].step == 8
    assert {a.path for a in client.list_artifacts(run_id, "encoder")} == {
        "encoder/encoder.safetensors",
        "encoder/config.yaml",
    }


def _wait_for_first_loss(client, experiment: str, timeout: float) -> str:
    """The id of the experiment's run once the background sender has created it and sent a
    ``train/loss`` value; the sender works on its own thread, so training may be ahead of it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
            return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError(f"no train/loss reached the server within {timeout}s")


def test_server_killed_mid_run_then_restarted_and_synced(
    images, tmp_path, mlflow_servers, caplog, capsys
):
    caplog.set_level(logging.INFO)
    port = mlflow_servers.free_port()
    root = tmp_path / "server"
    url, proc = mlflow_servers.start(root, port)
    client = MlflowClient(url)
    killed = {}

    def monitor(encoder, rows, cfg, info):
        def kill_server(step):
            if not killed:  # once some steps reached the server: kill it
                run_id = _wait_for_first_loss(client, "spool", timeout=60)
                history = client.get_metric_history(run_id, "train/loss")
                killed.update(step=step, before=len(history))
                mlflow_servers.stop(proc)
            return {}

        return kill_server

    out = tmp_path / "run"
    logger, _, result = _pretrain(_cfg(images, out, url, "train.monitor_every=3"), monitor)
    assert killed["step"] == 3 and 1 <= killed["before"] <= 3
    assert result.steps == 8 and (out / "encoder.safetensors").is_file()
    run_id = logger.run_id
    assert run_id is not None and logger.unsent > 0
    assert len(_tracking_warnings(caplog)) == 1

    mlflow_servers.start(root, port)  # the same port and sqlite store
    assert [r["sent"] for r in _sync(out, capsys)] == [0]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _assert_history_is_metrics_jsonl(client, run_id, out) >= 8


def test_a_dead_server_does_not_slow_the_calls(tmp_path, mlflow_servers):
    url = f"http://127.0.0.1:{mlflow_servers.free_port()}"
    logger = make_logger({"enabled": True, "uri": url}, tmp_path, run_name="dead")
    started = time.perf_counter()
    for step in range(200):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    assert time.perf_counter() - started < 2.0
    started = time.perf_counter()
    logger.close()
    assert time.perf_counter() - started < 10.0
    assert logger.unsent == 201  # 200 metrics and the close, all in the journal


def test_resumed_pretraining_continues_the_same_run(images, tmp_path, mlflow_server):
    out = tmp_path / "run"
    first, _, _ = _pretrain(_cfg(images, out, mlflow_server, "train.max_steps=4"))
    again, _, result = _pretrain(_cfg(images, out, mlflow_server, "train.max_steps=6"))
    assert result.resumed_from == 4 and again.run_id == first.run_id
    client = MlflowClient(mlflow_server)
    steps = [m.step for m in client.get_metric_history(first.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert again.unsent == 0
