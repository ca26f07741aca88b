"""Real processes: a SIGKILLed run resumes bitwise, and 2 DDP processes (torchrun, gloo)
follow the same loss curve as 1 process on the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medfm.data.ingest import ingest
from medfm.data.synthetic import SyntheticSpec, write_dataset

pytestmark = pytest.mark.slow
TINY = [
    "model.depth=2",
    "data.image_size=32",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.progress=false",
    "tracking.enabled=false",
    "train.log_every=1",
    "seed=3",
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    labels = write_dataset(root / "data", SyntheticSpec(cases_per_center=8, images_per_case=2))
    return ingest(
        [root / "data" / "raw"], root / "ingest", labels=labels, salt="s", progress=False
    ).manifest


def _cmd(out: Path, manifest: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medfm",
        "pretrain",
        f"data.manifest={manifest}",
        f"out_dir={out}",
        *TINY,
        *extra,
    ]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": "1"}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "encoder.safetensors"))


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train/loss"] for line in lines if "train/loss" in line]


def _checkpoint_step(out: Path) -> int:
    path = out / "checkpoint.pt"
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, weights_only=False)["step"])
    except Exception:  # the rename is atomic, but the file may be replaced while we read
        return 0


def test_sigkill_then_resume_is_bitwise_identical(manifest, tmp_path):
    steps = ["train.max_steps=40", "train.checkpoint_every=4"]
    straight = tmp_path / "straight"
    subprocess.run(_cmd(straight, manifest, *steps), env=_env(), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(killed, manifest, *steps),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while _checkpoint_step(killed) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "encoder.safetensors").exists()
    resumed_from = _checkpoint_step(killed)
    assert 8 <= resumed_from < 40
    subprocess.run(_cmd(killed, manifest, *steps), env=_env(), check=True, capture_output=True)

    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_ddp_processes_match_one(manifest, tmp_path):
    steps = ["train.max_steps=5", "train.checkpoint_every=100"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cmd(one, manifest, *steps), env=_env(), check=True, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*torchrun, *_cmd(two, manifest, *steps)[1:]], env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses_one, losses_two = _losses(one), _losses(two)
    assert len(losses_one) == len(losses_two) == 5
    assert losses_one == pytest.approx(losses_two, rel=1e-4, abs=1e-5)
    assert losses_one[-1] < losses_one[0]
    a, b = _weights(one), _weights(two)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-5, msg=name)
