"""The team server of ``docker/compose.yaml`` without Docker: a real PostgreSQL server (Debian's
``postgresql`` package, which ``.ci/run`` installs when it is missing) as MLflow's backend store,
started here on 127.0.0.1 and a free port, and the same ``mlflow server`` command on top of it.
A pre-training run logs to it, registers its encoder, and the rows are read back from PostgreSQL
itself, so the test cannot pass on another store."""

import contextlib
import glob
import json
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medfm.cli.main import main
from medfm.tracking.spool import Journal, find_journals

pytestmark = pytest.mark.slow


def _postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: on PATH, else Debian's versioned folder."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(folders[-1]) if folders else None


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root (CI runs as root): run it as Debian's ``postgres``."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _wait_ready(bin_dir: Path, port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited: {log.read_text()[-2000:]}")
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
            capture_output=True,
        )
        if ready.returncode == 0:
            return
        time.sleep(0.3)
    raise TimeoutError(f"postgres not ready after 60 s: {log.read_text()[-2000:]}")


@pytest.fixture
def postgres(mlflow_servers) -> Iterator[str]:
    """A fresh PostgreSQL cluster on 127.0.0.1 and a free port; its SQLAlchemy URL."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (CI installs it)")
    root = Path(tempfile.mkdtemp(prefix="medfm-pg-"))  # outside pytest's root-only tmp folders
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, log, port = root / "data", root / "server.log", mlflow_servers.free_port()
    subprocess.run(
        _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "-A", "trust"]),
        check=True,
        capture_output=True,
    )
    server = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
    server += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(_as_server_user(server), stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(bin_dir, port, proc, log)
        createdb = [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port)]
        subprocess.run([*createdb, "-U", "mlflow", "mlflow"], check=True, capture_output=True)
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _rows(url: str, query: str, *params) -> list[tuple]:
    """Rows straight from PostgreSQL, not through MLflow."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(url.replace("+psycopg2", ""))) as conn:
        with conn.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()


def _images(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(12, 16, 16), dtype=np.uint8)
    y = (np.arange(12) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez(path, train_images=x, train_labels=y)
    return path


def test_pretraining_logs_and_registers_on_a_postgres_backed_server(
    postgres, mlflow_servers, tmp_path, monkeypatch, capsys, caplog
):
    url, _ = mlflow_servers.start(tmp_path / "server", mlflow_servers.free_port(), postgres)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)  # another experiment active in this process, as after any
    mlflow.set_experiment("something-else")  # earlier registration: registering must cope
    mlflow.set_registry_uri(url)
    out = tmp_path / "run"
    status = main(
        [
            "pretrain",
            f"data.path={_images(tmp_path / 'images.npz')}",
            f"out_dir={out}",
            "model.depth=1",
            "data.image_size=16",
            "train.batch_size=4",
            "train.max_steps=4",
            "train.warmup_steps=1",
            "train.log_every=1",
            "train.progress=false",
            f"tracking.uri={url}",
            "tracking.experiment=team",
            "tracking.register_as=team-encoder",
            "tracking.register_alias=champion",
        ]
    )
    assert status == 0
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Registered as models:/team-encoder/1" in capsys.readouterr().out, said
    run_id = Journal.load(find_journals(out)[0]).run_id

    client = MlflowClient(url, registry_uri=url)
    assert client.get_run(run_id).info.status == "FINISHED"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = sorted((r["step"], r["train/loss"]) for r in records if "train/loss" in r)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")) == (
        expected
    )
    stored = _rows(
        postgres,
        "SELECT step, value FROM metrics WHERE run_uuid=%s AND key=%s",
        run_id,
        "train/loss",
    )
    assert sorted(stored) == expected and len(expected) == 4

    version = client.get_model_version_by_alias("team-encoder", "champion")
    assert version.run_id == run_id  # the training run itself holds the model
    assert version.tags["medfm.model_name"] == "vit_tiny_patch16_224"
    assert _rows(postgres, "SELECT name, version FROM model_versions") == [("team-encoder", 1)]
    try:
        model = mlflow.pyfunc.load_model("models:/team-encoder/1")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    batch = np.zeros((2, 1, 16, 16), np.float32)
    assert model.predict(batch).shape[0] == 2
