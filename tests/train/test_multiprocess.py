"""Real processes: a SIGKILLed run resumes bitwise, and 2 DDP processes (torchrun, gloo)
follow the same loss curve as 1 process on the same global batch: MAE through the CLI, and
SimCLR, hybrid, metadata and DINO through the engine (``_ddp_objectives.py``) with their real
random views, drawn from each sample's seed, whose contrastive negatives are all-gathered with
gradients and whose DINO centre is all-reduced."""

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

from medfm.data.ingestion.ingest import ingest
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
        return int(torch.load(path, weights_only=True)["step"])
    except Exception:  # the rename is atomic, but the file may be replaced while we read
        return 0


def _last_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines()[:-1] if path.is_file() else []  # the last may be cut
    return max((json.loads(line)["step"] for line in lines), default=0)


def test_sigkill_then_resume_with_workers_is_bitwise_identical(manifest, tmp_path, mlflow_server):
    """...and tracked as one MLflow run whose loss history has each step once, with the values
    of the uninterrupted run, though steps after the checkpoint were logged before the kill."""
    # the uninterrupted run decodes in the main process, the killed one in 2 DataLoader workers
    steps = ["train.max_steps=40", "train.checkpoint_every=4"]
    straight = tmp_path / "straight"
    subprocess.run(
        _cmd(straight, manifest, *steps, "data.num_workers=0"),
        env=_env(),
        check=True,
        capture_output=True,
    )
    tracked = ["tracking.enabled=true", f"tracking.uri={mlflow_server}"]
    steps += ["data.num_workers=2", *tracked, "tracking.experiment=sigkill"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(killed, manifest, *steps),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        step = _checkpoint_step(killed)
        if step >= 8 and _last_logged(killed) > step:  # logged past the checkpoint
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "encoder.safetensors").exists()
    resumed_from = _checkpoint_step(killed)
    assert 8 <= resumed_from < _last_logged(killed) < 40
    subprocess.run(_cmd(killed, manifest, *steps), env=_env(), check=True, capture_output=True)

    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    expected = _losses(straight)
    assert _losses(killed) == expected  # metrics.jsonl: each step once, uninterrupted values

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("sigkill").experiment_id
    (run,) = client.search_runs([experiment])
    assert run.info.status == "FINISHED"
    history = sorted(
        (m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")
    )
    assert history == list(enumerate(expected, start=1))


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


def test_ddp_ranks_do_not_wait_on_a_dead_tracking_server(manifest, tmp_path, mlflow_servers):
    """2 gloo processes tracking to a port where nothing listens: the run ends as fast as
    untracked, with one warning, and rank 0's journal holds what `medfm sync` will send."""
    from medfm.tracking.spool import Journal, find_journals

    dead = f"http://127.0.0.1:{mlflow_servers.free_port()}"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    steps = ["train.max_steps=5", "train.checkpoint_every=100"]
    timings = {}
    for name, extra in (("off", []), ("dead", ["tracking.enabled=true", f"tracking.uri={dead}"])):
        started = time.perf_counter()
        result = subprocess.run(
            [*torchrun, *_cmd(tmp_path / name, manifest, *steps, *extra)[1:]],
            env=_env(),
            capture_output=True,
            text=True,
        )
        timings[name] = time.perf_counter() - started
        assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("is unreachable") == 1  # rank 0 warns once; rank 1 has no logger
    assert timings["dead"] < timings["off"] + 15  # no retries on the training path
    (journal,) = find_journals(tmp_path / "dead")
    assert (
        len(Journal.load(journal).unsent()) > 5
        and (tmp_path / "dead" / "encoder.safetensors").is_file()
    )


def test_ddp_ranks_plan_and_stop_a_time_budget_together(manifest, tmp_path):
    """Under ``train.max_minutes`` both gloo processes fit the same schedule and stop at the same
    step: one stopping alone would hang in the checkpoint's gather (hence the timeout)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    steps = ["train.max_steps=100000", "train.max_minutes=0.1", "train.checkpoint_every=100000"]
    out = tmp_path / "budget"
    result = subprocess.run(
        [*torchrun, *_cmd(out, manifest, *steps)[1:]],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    plan = state["scheduler"]["lr_lambdas"][0]
    assert plan["budget"] == [100000, 0.1] and 12 <= plan["total"] < 100000
    assert 12 <= state["step"] <= plan["total"]  # at the plan, or earlier by the clock
    assert _last_logged(out) <= state["step"] == len(_losses(out))
    assert (out / "encoder.safetensors").is_file()


OBJECTIVES = ["simclr", "hybrid", "metadata", "dino", "anatcl", "sit", "dinov2", "dinov2_sk"]
WORKER = Path(__file__).with_name("_ddp_objectives.py")


@pytest.fixture(scope="module")
def objective_runs(tmp_path_factory):
    """The worker once in 1 process and once in 2 (torchrun, gloo), for every objective."""
    root = tmp_path_factory.mktemp("objectives")
    one, two = root / "one", root / "two"
    subprocess.run(
        [sys.executable, str(WORKER), str(one)], env=_env(), check=True, capture_output=True
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*torchrun, str(WORKER), str(two)], env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return one, two


def test_gather_with_grad_across_two_processes(objective_runs):
    """Forward: every rank's rows in rank order. Backward: the gradient summed over the ranks'
    losses, this rank's slice (lightly's GatherLayer). Also the device-side reductions."""
    ranks = json.loads((objective_runs[1] / "collectives.json").read_text())
    assert len(ranks) == 2
    for r in ranks:
        assert r["forward"] and r["backward"] and r["gather_no_grad"]
        assert r["all_reduce_mean"] == r["mean_across"] == 0.5
        # torch's SyncBatchNorm is CUDA-only (r["syncbn_cpu"] has its error on CPU), so on a
        # gloo/CPU run train.sync_batchnorm leaves the model unchanged
        assert r["maybe_sync_batchnorm_cpu_unchanged"]


@pytest.mark.parametrize("name", OBJECTIVES)
def test_two_ddp_processes_match_one_for_contrastive_and_dino(objective_runs, name):
    """With the objectives' real default random views (SimCLR's two views, DINO's multi-crop),
    keyed by each sample's seed: the same views, loss curve and gradient on 1 and 2 processes."""
    one, two = objective_runs
    # each rank made the views of its share as one process makes them for the whole batch
    views_one, views_two = (
        torch.load(one / f"{name}_views.pt"),
        torch.load(two / f"{name}_views.pt"),
    )
    assert len(views_one) == len(views_two) == (4 if name.startswith("dino") else 2)
    for v1, v2 in zip(views_one, views_two, strict=True):
        assert v1.shape[0] == 8
        torch.testing.assert_close(v2, v1, rtol=0, atol=1e-6)
    assert not torch.allclose(views_one[0], views_one[1])  # random views, not a fixed pair
    losses_one, losses_two = _losses(one / name), _losses(two / name)
    assert len(losses_one) == len(losses_two) == 3
    assert losses_two == pytest.approx(losses_one, rel=1e-4)
    # the DDP-averaged gradient of 2 processes is the 1-process gradient (Adam would hide a
    # wrongly scaled gradient in the loss curve)
    grads_one = torch.load(one / f"{name}_grads.pt")
    grads_two = torch.load(two / f"{name}_grads.pt")
    assert grads_one.keys() == grads_two.keys() and grads_one
    for key, g in grads_one.items():
        scale = float(g.abs().max())
        assert float((grads_two[key] - g).abs().max()) <= 1e-4 * scale + 1e-9, key


def test_simclr_negatives_come_from_every_process(objective_runs):
    """Control: without the gather, 2 processes' mean loss (local negatives) is another loss."""
    one, two = objective_runs
    full = json.loads((one / "simclr_local_loss.json").read_text())
    local = json.loads((two / "simclr_local_loss.json").read_text())
    assert abs(local - full) > 0.1
