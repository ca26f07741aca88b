"""Tracking overhead of pre-training: step time with a real local MLflow server, and with the
server unreachable, against tracking off, measured side by side in one run.

A real ``mlflow server`` (sqlite backend in a temporary folder, 127.0.0.1, a free port) is
started and stopped at the end (also on error). The same small MAE recipe (the defaults, shrunk:
ViT-tiny with 4 blocks, 32 px, batch 32) is pre-trained through
``medfm.train.pretrain.pretrain`` with a logger from ``medfm.tracking.base.make_logger`` and
``train.log_every=1``, so that every step logs, in three modes interleaved ``--repeats`` times
(off, server, dead, off, server, dead, ...), each in a fresh ``out_dir``:

- ``off``: ``tracking.enabled=false`` (a ``NullLogger``; ``metrics.jsonl`` is still written);
- ``server``: ``tracking.uri`` is the live server;
- ``dead``: ``tracking.uri`` is a port nothing listens on.

Step time is the wall time between the ends of consecutive steps of the training loop (forward,
backward, optimiser, logging and the loop's bookkeeping), read by wrapping
``medfm.train.engine._after_step``; the first ``--warmup`` steps (FLOP counting, the loader's
start) are left out. Each run gives its median step time (robust to other load on the machine)
and its mean step time (so rare stalls count); each mode the median of those over its runs. The
overhead is the server mode's median against ``off``'s; the mean's overhead is shown beside it.
The logger's ``close()`` (the final flush to the server) is timed separately, as is the whole
``pretrain`` call. Other processes on the machine add noise: the spread of the ``off`` runs is
printed as a guide to what a difference of a few percent means.

Data: ``../shared/data/breastmnist.npz`` when present, else a generated MedMNIST-layout ``.npz``
of random 28x28 images.

    python benchmarks/tracking_overhead.py --steps 40 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfm.config import load_config
from medfm.tracking.base import make_logger
from medfm.train import engine
from medfm.train.pretrain import pretrain

SHARED_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "breastmnist.npz"
MODES = ("off", "server", "dead")


@dataclass
class RunTiming:
    """One pre-training run: its step times (s), the ``pretrain`` call, ``close()``, and what
    the logger had not sent after closing."""

    steps: list[float]
    run_s: float
    close_s: float
    unsent: int
    run_id: str | None


@dataclass
class ModeTimings:
    """The runs of one tracking mode."""

    runs: list[RunTiming] = field(default_factory=list)

    def median_ms(self) -> float:
        """Median over runs of each run's median step time, in ms (robust to other load)."""
        return 1e3 * statistics.median(statistics.median(r.steps) for r in self.runs)

    def mean_ms(self) -> float:
        """Median over runs of each run's mean step time, in ms (rare stalls count)."""
        return 1e3 * statistics.median(statistics.fmean(r.steps) for r in self.runs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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


def stop_server(proc: subprocess.Popen) -> None:
    """End the server's process group: SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@contextlib.contextmanager
def mlflow_server(root: Path, timeout: float = 120.0) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (sqlite in ``root``), its URL while in use."""
    root.mkdir(parents=True, exist_ok=True)
    log_path, port = root / "server.log", free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc, log_path, timeout)
        yield url
    finally:
        stop_server(proc)


def dataset(root: Path) -> Path:
    """BreastMNIST from ``../shared/data`` when present, else random 28x28 images in its layout."""
    if SHARED_NPZ.is_file():
        return SHARED_NPZ
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 546), ("val", 78), ("test", 156)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    path = root / "random_medmnist.npz"
    np.savez(path, **arrays)
    return path


@contextlib.contextmanager
def step_clock() -> Iterator[list[float]]:
    """Timestamps (``perf_counter``) at the end of each training step, while in use."""
    stamps: list[float] = []
    original = engine._after_step

    def timed(*args: Any, **kwargs: Any) -> bool:
        stop = original(*args, **kwargs)
        stamps.append(time.perf_counter())
        return stop

    engine._after_step = timed
    try:
        yield stamps
    finally:
        engine._after_step = original


def run_once(overrides: list[str], out_dir: Path, warmup: int) -> RunTiming:
    """One pre-training run with ``overrides`` into ``out_dir``; its timings."""
    cfg = load_config(None, [*overrides, f"out_dir={out_dir}"])
    logger = make_logger(cfg.tracking, out_dir)
    try:
        with step_clock() as stamps:
            start = time.perf_counter()
            _, result = pretrain(cfg, logger)
            run_s = time.perf_counter() - start
    finally:
        closing = time.perf_counter()
        logger.close()
        close_s = time.perf_counter() - closing
    if result.steps != int(cfg.train.max_steps) or len(stamps) != result.steps:
        raise RuntimeError(f"ran {result.steps} steps, timed {len(stamps)}")
    steps = list(np.diff(stamps[warmup:]))
    unsent = int(getattr(logger, "unsent", 0))
    return RunTiming(steps, run_s, close_s, unsent, logger.run_id)


def base_overrides(data: Path, steps: int) -> list[str]:
    """The recipe every mode trains: the defaults on ``data``, logging at every step."""
    return [
        f"data.path={data}",
        "data.channels=1",
        "data.num_workers=0",
        "model.depth=4",
        "train.batch_size=32",
        f"train.max_steps={steps}",
        "train.warmup_steps=5",
        "train.log_every=1",
        "train.checkpoint_every=1000000",
        "train.progress=false",
        "tracking.experiment=tracking_overhead",
    ]


def mode_overrides(mode: str, url: str, dead_url: str) -> list[str]:
    """The tracking settings of ``mode``."""
    if mode == "off":
        return ["tracking.enabled=false"]
    return ["tracking.enabled=true", f"tracking.uri={url if mode == 'server' else dead_url}"]


def measure(args: argparse.Namespace, root: Path) -> dict[str, ModeTimings]:
    """Every mode ``args.repeats`` times, interleaved, against one live server."""
    data = dataset(root)
    base, short = base_overrides(data, args.steps), base_overrides(data, 5)
    timings = {mode: ModeTimings() for mode in MODES}
    dead_url = f"http://127.0.0.1:{free_port()}"
    with mlflow_server(root / "server") as url:
        for mode in MODES:  # untimed warm-up: imports, the server's first run
            run_once([*short, *mode_overrides(mode, url, dead_url)], root / f"warm_{mode}", 1)
        for rep in range(args.repeats):
            for mode in MODES:
                out_dir = root / f"{mode}_{rep}"
                timing = run_once(
                    [*base, *mode_overrides(mode, url, dead_url)], out_dir, args.warmup
                )
                timings[mode].runs.append(timing)
                print(
                    f"  repeat {rep + 1}/{args.repeats} {mode:6}: "
                    f"median {1e3 * statistics.median(timing.steps):7.1f} ms/step, "
                    f"mean {1e3 * statistics.fmean(timing.steps):7.1f} ms/step, "
                    f"close {timing.close_s:5.2f} s",
                    flush=True,
                )
    return timings


def report(timings: dict[str, ModeTimings], args: argparse.Namespace) -> None:
    """The table and the final overhead line."""
    off = timings["off"]
    ref_median, ref_mean = off.median_ms(), off.mean_ms()
    off_medians = [1e3 * statistics.median(r.steps) for r in off.runs]
    spread = 100 * (max(off_medians) - min(off_medians)) / ref_median
    print(
        f"\n{'mode':7} {'median ms':>9} {'overhead':>9} {'mean ms':>8} {'overhead':>9} "
        f"{'run s':>6} {'close s':>7} {'unsent':>6} {'MLflow runs':>11}"
    )
    for mode, t in timings.items():
        median, mean = t.median_ms(), t.mean_ms()
        has_run = sum(r.run_id is not None for r in t.runs)
        print(
            f"{mode:7} {median:9.1f} {100 * (median / ref_median - 1):+8.1f}% "
            f"{mean:8.1f} {100 * (mean / ref_mean - 1):+8.1f}% "
            f"{statistics.median(r.run_s for r in t.runs):6.2f} "
            f"{statistics.median(r.close_s for r in t.runs):7.2f} "
            f"{max(r.unsent for r in t.runs):6d} {has_run:>9}/{len(t.runs)}"
        )
    print(
        f"median/mean ms: median over {len(off.runs)} runs of each run's median/mean step time "
        f"({args.steps} steps, first {args.warmup} left out); run s: the pretrain call; "
        f"close s: logger.close(); unsent: calls left in the spool after close (max over runs); "
        f"spread of the 'off' runs' medians: {spread:.1f} %"
    )
    overhead = 100 * (timings["server"].median_ms() / ref_median - 1)
    print(f"tracking overhead: {overhead:.1f} % (target < 2 %)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Pre-training step time with a real local MLflow server, and with the "
        "server unreachable, against tracking off (interleaved runs in one process)."
    )
    parser.add_argument(
        "--steps", type=int, default=40, help="optimiser steps per run (default: 40)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each mode, interleaved (default: 3)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="first steps of each run not timed (default: 3)"
    )
    args = parser.parse_args()
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")
    logging.getLogger("medfm.tracking").setLevel(logging.ERROR)  # the dead server's warning
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # no "View run at" lines
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
        f"MAE ViT-tiny (4 blocks), 32 px, batch 32, log_every=1; data: "
        f"{SHARED_NPZ.name if SHARED_NPZ.is_file() else 'random 28x28 images'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        timings = measure(args, Path(tmp))
    report(timings, args)


if __name__ == "__main__":
    main()
