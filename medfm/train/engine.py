"""The step loop. It knows nothing of MAE or DINO: it calls ``objective(batch)["loss"]``.

Batches come from ``batches(start)``, an iterator of this process's batch for each step from
``start`` on (:mod:`medfm.data.loader`: a DataLoader over a step-indexed sampler, or in-process
batches). Each batch carries ``sample_seed``, one seed per image from ``(seed, step, position)``;
so a resumed run sees the same batches as an uninterrupted one, and N processes or workers see
the same global batch as one. An objective may define ``on_step_end()`` (e.g. DINO's EMA
teacher update); it is called after every optimiser step.

:func:`train` is the loop; its parts are :func:`_begin` (set up and resume), :func:`_step` (one
optimiser step), :func:`_after_step` (report, monitor, checkpoint, decide to stop) and the
result. What it reports lives in :mod:`medfm.train.reporting`, its meters in
:mod:`medfm.train.throughput`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from medfm.tracking.base import Logger, NullLogger, tracking_state
from medfm.train import distributed as D
from medfm.train.budget import BudgetPlanner
from medfm.train.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from medfm.train.errors import NonFiniteLossError
from medfm.train.flops import FlopMeter
from medfm.train.optim import build_optimizer
from medfm.train.reporting import early_stop, last_logged_step, log_step
from medfm.train.state import RunState
from medfm.train.throughput import Throughput

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What a training run ended with: steps, final loss, images/s, the best monitor value and
    where it resumed from."""

    steps: int
    final_loss: float
    images_per_second: float
    resumed_from: int
    best: dict | None = None


def _setup(objective, cfg, out_dir, info) -> RunState:
    objective.to(info.device)
    if cfg.train.get("grad_checkpointing"):
        enable_grad_checkpointing(objective)
    objective = D.maybe_sync_batchnorm(objective, bool(cfg.train.get("sync_batchnorm")), info)
    opt, sched = build_optimizer(objective, cfg.train)
    model = objective
    if cfg.train.get("compile"):
        compile_encoder(objective)
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    return RunState(objective, model, opt, sched, info, Path(out_dir))


def compile_encoder(objective: nn.Module) -> int:
    """``train.compile``: ``torch.compile`` each transformer block of the objective's encoder in
    place; returns how many modules were compiled.

    Blocks, not the objective: the views and losses draw per-sample seeds with NumPy, which
    dynamo cannot trace, and they are a few per cent of a step. Blocks, not the encoder: the
    objectives call the encoder's parts (``patch_embed``, ``blocks``, ``forward_features``)
    rather than the encoder module itself, and ``nn.Module.compile`` only takes effect through a
    module's own call; ``blocks`` is an ``nn.Sequential`` that calls each block that way. In
    place, so the state-dict keys, checkpoints and exports are unchanged. An encoder without
    ``blocks`` is compiled whole."""
    encoder = getattr(objective, "encoder", objective)
    blocks = list(getattr(encoder, "blocks", []))
    for module in blocks or [encoder]:
        module.compile()
    return len(blocks) or 1


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


def _resume(run: RunState) -> int:
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


def _checkpoint(run: RunState, step: int, logger: Logger | None = None) -> None:
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
                "tracking": tracking_state(logger) if logger is not None else None,
            },
        )
    D.barrier(run.info)
    run.last_good = step


def _check_finite(loss: float, step: int, run: RunState) -> None:
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


def _micro_batches(batch: dict, accum: int) -> list[dict]:
    """Split a batch's tensors into ``accum`` equal micro-batches along the batch axis."""
    size = len(batch["image"])
    if size % accum:
        raise ValueError(
            f"per-process batch {size} is not divisible by train.grad_accumulation={accum}"
        )
    per = size // accum
    return [
        {k: v[i * per : (i + 1) * per] if torch.is_tensor(v) else v for k, v in batch.items()}
        for i in range(accum)
    ]


def _forward_backward(run: RunState, batch: dict, accum: int) -> dict[str, float]:
    """Accumulate gradients over micro-batches; returns the step's mean scalar outputs."""
    totals: dict[str, float] = {}
    for i, part in enumerate(_micro_batches(batch, accum)):
        part = {
            k: v.to(run.info.device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in part.items()
        }
        sync = i == accum - 1 or not run.info.enabled
        with contextlib.nullcontext() if sync else run.model.no_sync(), _autocast(run.info):
            out = run.model(part)
        (out["loss"] / accum).backward()
        for key, value in out.items():
            if torch.is_tensor(value) and value.ndim == 0:
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / accum
    return totals


def _optimizer_step(run: RunState, grad_clip: float | None) -> None:
    if grad_clip:
        nn.utils.clip_grad_norm_(run.objective.parameters(), float(grad_clip))
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    hook = getattr(run.objective, "on_step_end", None)
    if callable(hook):
        hook()


@dataclasses.dataclass
class _Loop:
    """What the loop needs besides the run: ``train.*``, where metrics go, its meters."""

    tc: DictConfig
    logger: Logger
    monitor: Callable[[int], dict] | None
    speed: Throughput
    start: int
    planner: BudgetPlanner


def _begin(
    objective: nn.Module, cfg: DictConfig, out_dir: str | Path, info: D.DistInfo
) -> tuple[RunState, int]:
    """Set up the run and resume it from ``out_dir``'s checkpoint when there is one; the run and
    the step it starts from (0 for a fresh run, whose stale ``metrics.jsonl`` is removed)."""
    run = _setup(objective, cfg, out_dir, info)
    start = _resume(run)
    run.sched.lr_lambdas[0].follow(cfg.train)  # a saved plan holds only for the same budget
    run.last_good = start or None
    if start == 0 and info.is_main:
        (run.out_dir / "metrics.jsonl").unlink(missing_ok=True)
    elif info.is_main:
        run.logged_until = last_logged_step(run.out_dir / "metrics.jsonl")
    objective.train()
    return run, start


def _progress_bar(start: int, end: int, tc: DictConfig, info: D.DistInfo) -> tqdm:
    return tqdm(
        range(start, end),
        desc="pretrain",
        unit="step",
        initial=start,
        total=end,
        disable=not (tc.progress and info.is_main),
    )


def _step(run: RunState, loop: _Loop, stream: Iterator[dict], step: int) -> tuple[float, dict]:
    """One optimiser step on the next batch: the loss (mean over processes) and its terms."""
    waited = time.perf_counter()
    batch = next(stream)
    waited = time.perf_counter() - waited
    with loop.speed.meter.count(step == loop.start):
        terms = _forward_backward(run, batch, int(loop.tc.get("grad_accumulation", 1)))
    loss = D.mean_across(terms["loss"], run.info)
    _check_finite(loss, step, run)
    _optimizer_step(run, loop.tc.grad_clip)
    loop.speed.add(len(batch["image"]), waited)
    return loss, terms


def _out_of_time(loop: _Loop, max_minutes: float, info: D.DistInfo) -> bool:
    """Whether any process is past ``max_minutes``, decided together so every rank stops at
    the same step (a rank stopping alone would wait in the checkpoint's gather for ever)."""
    over = float(loop.speed.elapsed() > 60 * max_minutes)
    return D.mean_across(over, info) > 0


def _after_step(run: RunState, loop: _Loop, bar: tqdm, done: int, loss: float, terms: dict) -> bool:
    """Report step ``done``, run the monitor, checkpoint; whether to stop (early stopping or
    ``train.max_minutes``)."""
    tc, now = loop.tc, loop.speed.summary()
    bar.set_postfix(
        loss=f"{loss:.4f}",
        img_s=f"{now['images_per_second']:.0f}",
        wait=f"{now['data_wait']:.0%}",
    )
    if done % int(tc.log_every) == 0 or done == loop.planner.end:
        log_step(run, loop.logger, done, terms, loss, now)
    stop = early_stop(run, loop.monitor, done, tc, loop.logger)
    if done == loop.planner.end < int(tc.max_steps):
        log.info("Stopping at step %d: the schedule fitted to train.max_minutes ends here", done)
        stop = True
    if tc.max_minutes and _out_of_time(loop, float(tc.max_minutes), run.info):
        log.info("Stopping at step %d: train.max_minutes=%s reached", done, tc.max_minutes)
        stop = True
    if stop or done % int(tc.checkpoint_every) == 0:
        _checkpoint(run, done, loop.logger)
    return stop


def train(
    objective: nn.Module,
    batches: Callable[[int], Iterable[dict]],
    cfg: DictConfig,
    out_dir: str | Path,
    logger: Logger | None = None,
    monitor: Callable[[int], dict] | None = None,
    info: D.DistInfo | None = None,
) -> TrainResult:
    """Run ``train.max_steps`` optimiser steps (or until ``max_minutes``), resuming if possible.

    With ``train.max_minutes`` the LR schedule is fitted, once, to the steps that fit in it
    (:mod:`medfm.train.budget`; ``train.fit_schedule_to_minutes=false`` keeps ``max_steps``).

    ``batches(start)`` yields this process's batch (``image``, ``sample_seed``, ...) for each
    step from ``start``; see :mod:`medfm.data.loader`. In a distributed run each process gets
    its contiguous share of the global batch of ``train.batch_size``.
    """
    info = info or D.DistInfo()
    run, start = _begin(objective, cfg, out_dir, info)
    speed = Throughput(FlopMeter(info.device), info.world_size)
    tc = cfg.train
    planner = BudgetPlanner(run.sched.lr_lambdas[0], tc, start, info)
    loop = _Loop(tc, logger or NullLogger(), monitor, speed, start, planner)
    loss, done, stream = float("nan"), start, iter(batches(start))
    bar = _progress_bar(start, planner.end, tc, info)
    for step in bar:
        loss, terms = _step(run, loop, stream, step)
        done = step + 1
        planned = planner.observe(done, speed.elapsed())
        if planned is not None:
            bar.total = planned
            loop.logger.log_metrics({"planned_steps": float(planned)}, step=done)
        if _after_step(run, loop, bar, done, loss, terms):
            break
    bar.close()
    rate = speed.summary()["images_per_second"]
    return TrainResult(done, loss, rate, start, run.best)
