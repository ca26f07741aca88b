"""The step loop. It knows nothing of MAE or DINO: it calls ``objective(batch)["loss"]``.

Data order is a pure function of ``(seed, step)`` (:func:`batch_indices`), and each sample also
gets a seed of its own (``batch["sample_seed"]``) from ``(seed, step, position)``; so a resumed
run sees the same batches as an uninterrupted one, and N processes see the same global batch as one.
An objective may define ``on_step_end()`` (e.g. DINO's EMA teacher update); it is called after
every optimiser step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from medfm.tracking.base import Logger, NullLogger
from medfm.train import distributed as D
from medfm.train.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from medfm.train.flops import FlopMeter
from medfm.train.optim import build_optimizer

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    steps: int
    final_loss: float
    images_per_second: float
    resumed_from: int
    best: dict | None = None


@dataclasses.dataclass
class _Run:
    """What the loop carries between steps."""

    objective: nn.Module
    model: nn.Module  # the objective, wrapped in DDP when distributed
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    info: D.DistInfo
    out_dir: Path
    last_good: int | None = None
    best: dict | None = None


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of the ``step``-th batch: consecutive slices of a per-epoch seeded permutation."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[pos * batch_size : (pos + 1) * batch_size]


def sample_seeds(step: int, batch_size: int, seed: int) -> np.ndarray:
    """One seed per position of the ``step``-th global batch (for per-sample randomness)."""
    return np.random.default_rng([seed, step, 7]).integers(0, 2**62, size=batch_size)


def _resume(run: _Run) -> int:
    state = load_checkpoint(run.out_dir / CHECKPOINT)
    if state is None:
        return 0
    run.objective.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    if len(rngs) == run.info.world_size:
        set_rng_state(rngs[run.info.rank])
    else:
        log.warning(
            "Checkpoint has RNG states of %d processes, this run has %d; random streams restart",
            len(rngs),
            run.info.world_size,
        )
    run.best = state.get("best")
    log.info("Resuming from %s at step %d", run.out_dir / CHECKPOINT, state["step"])
    return int(state["step"])


def _checkpoint(run: _Run, step: int) -> None:
    rngs = D.gather_objects(rng_state(), run.info)  # every rank's RNG, for an exact resume
    if run.info.is_main:
        save_checkpoint(
            run.out_dir / CHECKPOINT,
            {
                "step": step,
                "model": run.objective.state_dict(),
                "optimizer": run.opt.state_dict(),
                "scheduler": run.sched.state_dict(),
                "rng": rngs,
                "best": run.best,
            },
        )
    D.barrier(run.info)
    run.last_good = step


def _check_finite(loss: float, step: int, run: _Run) -> None:
    if not math.isfinite(loss):
        where = (
            f"the last good checkpoint is {run.out_dir / CHECKPOINT} (step {run.last_good})"
            if run.last_good is not None
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"Loss is {loss} at step {step}; {where}. Lower train.lr or raise "
            "train.warmup_steps, then rerun the same command to resume."
        )


def _autocast(info: D.DistInfo):
    """bf16 autocast on CUDA; plain fp32 on CPU (bf16 is far slower there)."""
    if info.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _micro_batches(idx: np.ndarray, seeds: np.ndarray, accum: int):
    if len(idx) % accum:
        raise ValueError(
            f"per-process batch {len(idx)} is not divisible by train.grad_accumulation={accum}"
        )
    per = len(idx) // accum
    return [(idx[i * per : (i + 1) * per], seeds[i * per : (i + 1) * per]) for i in range(accum)]


def _forward_backward(run: _Run, get_batch, idx, seeds, accum: int) -> dict[str, float]:
    """Accumulate gradients over micro-batches; returns the step's mean scalar outputs."""
    totals: dict[str, float] = {}
    for i, (part, part_seeds) in enumerate(_micro_batches(idx, seeds, accum)):
        batch = {
            k: v.to(run.info.device) if torch.is_tensor(v) else v
            for k, v in get_batch(part).items()
        }
        batch["sample_seed"] = torch.as_tensor(part_seeds)
        sync = i == accum - 1 or not run.info.enabled
        with contextlib.nullcontext() if sync else run.model.no_sync(), _autocast(run.info):
            out = run.model(batch)
        (out["loss"] / accum).backward()
        for key, value in out.items():
            if torch.is_tensor(value) and value.ndim == 0:
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / accum
    return totals


def _optimizer_step(run: _Run, grad_clip: float | None) -> None:
    if grad_clip:
        nn.utils.clip_grad_norm_(run.objective.parameters(), float(grad_clip))
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    hook = getattr(run.objective, "on_step_end", None)
    if callable(hook):
        hook()


def _append_jsonl(run: _Run, record: dict) -> None:
    """Rank 0 keeps ``out_dir/metrics.jsonl``: the loss curve without needing MLflow."""
    if run.info.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        with open(run.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({k: v for k, v in record.items() if v is not None}) + "\n")


def _run_monitor(run: _Run, monitor, step: int, tc: DictConfig, logger: Logger) -> None:
    metrics = monitor(step) if run.info.is_main else {}
    logger.log_metrics({f"monitor/{k}": v for k, v in metrics.items()}, step=step)
    _append_jsonl(run, {"step": step} | {f"monitor/{k}": v for k, v in metrics.items()})
    key = str(tc.monitor_metric)
    if (
        run.info.is_main
        and key in metrics
        and (run.best is None or metrics[key] > run.best["value"])
    ):
        run.best = {"metric": key, "value": float(metrics[key]), "step": step}
        save_checkpoint(run.out_dir / "best.pt", {"model": run.objective.state_dict(), **run.best})


def _patience_exhausted(run: _Run, step: int, tc: DictConfig) -> bool:
    """Early stopping: ``train.patience`` monitors in a row without a better monitor metric
    (decided on rank 0, agreed by every rank)."""
    patience = int(tc.get("patience") or 0)
    if not patience:
        return False
    stale = run.best is not None and step - run.best["step"] >= patience * int(tc.monitor_every)
    return D.mean_across(float(stale and run.info.is_main), run.info) > 0


def _setup(objective, cfg, out_dir, info) -> _Run:
    objective.to(info.device)
    if cfg.train.get("grad_checkpointing"):
        enable_grad_checkpointing(objective)
    opt, sched = build_optimizer(objective, cfg.train)
    model = objective
    if cfg.train.get("compile"):
        model = torch.compile(model)
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    return _Run(objective, model, opt, sched, info, Path(out_dir))


def enable_grad_checkpointing(objective: nn.Module) -> None:
    """Recompute each transformer block in the backward pass (activation checkpointing).

    Wraps ``encoder.blocks[i].forward`` in ``torch.utils.checkpoint``, so parameter names (and
    hence checkpoints and encoder artifacts) are unchanged.
    """
    from torch.utils.checkpoint import checkpoint

    encoder = getattr(objective, "encoder", objective)
    for block in getattr(encoder, "blocks", []):
        forward = block.forward
        block.forward = lambda *a, _f=forward, **k: checkpoint(_f, *a, use_reentrant=False, **k)


def train(
    objective: nn.Module,
    get_batch: Callable[[np.ndarray], dict],
    n_samples: int,
    cfg: DictConfig,
    out_dir: str | Path,
    logger: Logger | None = None,
    monitor: Callable[[int], dict] | None = None,
    info: D.DistInfo | None = None,
) -> TrainResult:
    """Run ``train.max_steps`` optimiser steps (or until ``max_minutes``), resuming if possible.

    ``get_batch(indices)`` returns a batch dict for dataset indices; in a distributed run each
    process gets its contiguous share of the global batch of ``train.batch_size``.
    """
    tc, logger, info = cfg.train, logger or NullLogger(), info or D.DistInfo()
    run = _setup(objective, cfg, out_dir, info)
    start = _resume(run)
    run.last_good = start or None
    if start == 0 and info.is_main:
        (run.out_dir / "metrics.jsonl").unlink(missing_ok=True)
    objective.train()
    meter = FlopMeter(info.device)
    t0, seen, loss, done = time.perf_counter(), 0, float("nan"), start
    bar = tqdm(
        range(start, int(tc.max_steps)),
        desc="pretrain",
        unit="step",
        initial=start,
        total=int(tc.max_steps),
        disable=not (tc.progress and info.is_main),
    )
    for step in bar:
        idx = batch_indices(step, n_samples, int(tc.batch_size), int(cfg.seed))
        seeds = sample_seeds(step, len(idx), int(cfg.seed))
        idx, seeds = D.shard(idx, info), D.shard(seeds, info)
        with meter.count(step == start):
            terms = _forward_backward(
                run, get_batch, idx, seeds, int(tc.get("grad_accumulation", 1))
            )
        loss = D.mean_across(terms["loss"], info)
        _check_finite(loss, step, run)
        _optimizer_step(run, tc.grad_clip)
        seen, done = seen + len(idx) * info.world_size, step + 1
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        if done % int(tc.log_every) == 0 or done == int(tc.max_steps):
            metrics = {f"train/{k}": v for k, v in terms.items()} | {
                "train/loss": loss,
                "train/lr": run.sched.get_last_lr()[0],
                "train/images_per_second": rate,
                "train/mfu": meter.mfu(rate / len(idx) / info.world_size),
            }
            logger.log_metrics(metrics, step=done)
            _append_jsonl(run, {"step": done} | metrics)
        if monitor and tc.get("monitor_every") and done % int(tc.monitor_every) == 0:
            _run_monitor(run, monitor, done, tc, logger)
            if _patience_exhausted(run, done, tc):
                log.info(
                    "Early stop at step %d: no better %s for train.patience=%s monitors",
                    done,
                    tc.monitor_metric,
                    tc.patience,
                )
                _checkpoint(run, done)
                break
        if done % int(tc.checkpoint_every) == 0:
            _checkpoint(run, done)
        if tc.max_minutes and time.perf_counter() - t0 > 60 * float(tc.max_minutes):
            log.info("Stopping at step %d: train.max_minutes=%s reached", done, tc.max_minutes)
            _checkpoint(run, done)
            break
    bar.close()
    return TrainResult(done, loss, seen / max(time.perf_counter() - t0, 1e-9), start, run.best)
