"""The step loop. It knows nothing of MAE or DINO: it calls ``objective(batch)["loss"]``.

Data order is a pure function of ``(seed, step)`` (:func:`batch_indices`), so a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
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
from medfm.train.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
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


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of the ``step``-th batch: consecutive slices of a per-epoch seeded permutation."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[pos * batch_size : (pos + 1) * batch_size]


def _resume(out_dir: Path, objective: nn.Module, opt: torch.optim.Optimizer, sched) -> int:
    state = load_checkpoint(out_dir / CHECKPOINT)
    if state is None:
        return 0
    objective.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    log.info("Resuming from %s at step %d", out_dir / CHECKPOINT, state["step"])
    return int(state["step"])


def _checkpoint(out_dir: Path, step: int, objective: nn.Module, opt, sched) -> Path:
    return save_checkpoint(
        out_dir / CHECKPOINT,
        {
            "step": step,
            "model": objective.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": rng_state(),
        },
    )


def _check_finite(loss: torch.Tensor, step: int, out_dir: Path, last_good: int | None) -> None:
    if not math.isfinite(loss.item()):
        where = (
            f"the last good checkpoint is {out_dir / CHECKPOINT} (step {last_good})"
            if last_good is not None
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"Loss is {loss.item()} at step {step}; {where}. Lower train.lr or "
            "raise train.warmup_steps, then rerun the same command to resume."
        )


def train(
    objective: nn.Module,
    get_batch: Callable[[np.ndarray], dict],
    n_samples: int,
    cfg: DictConfig,
    out_dir: str | Path,
    logger: Logger | None = None,
) -> TrainResult:
    """Run ``train.max_steps`` optimiser steps (or until ``max_minutes``), resuming if possible."""
    out_dir, tc, logger = Path(out_dir), cfg.train, logger or NullLogger()
    opt, sched = build_optimizer(objective, tc)
    start = _resume(out_dir, objective, opt, sched)
    last_good = start if start else None
    objective.train()
    t0, seen, loss_value, done = time.perf_counter(), 0, float("nan"), start
    bar = tqdm(
        range(start, int(tc.max_steps)),
        desc="pretrain",
        unit="step",
        disable=not tc.progress,
        initial=start,
        total=int(tc.max_steps),
    )
    for step in bar:
        idx = batch_indices(step, n_samples, int(tc.batch_size), int(cfg.seed))
        out = objective(get_batch(idx))
        _check_finite(out["loss"], step, out_dir, last_good)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if tc.grad_clip:
            nn.utils.clip_grad_norm_(objective.parameters(), float(tc.grad_clip))
        opt.step()
        sched.step()
        seen, done = seen + len(idx), step + 1
        loss_value = out["loss"].item()
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate:.0f}")
        if (step + 1) % int(tc.log_every) == 0 or step + 1 == int(tc.max_steps):
            terms = {f"train/{k}": v.item() for k, v in out.items() if v.ndim == 0}
            logger.log_metrics(
                terms | {"train/lr": sched.get_last_lr()[0], "train/images_per_second": rate},
                step=step + 1,
            )
        if (step + 1) % int(tc.checkpoint_every) == 0:
            _checkpoint(out_dir, step + 1, objective, opt, sched)
            last_good = step + 1
        if tc.max_minutes and time.perf_counter() - t0 > 60 * float(tc.max_minutes):
            log.info("Stopping at step %d: train.max_minutes=%s reached", step + 1, tc.max_minutes)
            _checkpoint(out_dir, step + 1, objective, opt, sched)
            break
    bar.close()
    return TrainResult(done, loss_value, seen / max(time.perf_counter() - t0, 1e-9), start)
