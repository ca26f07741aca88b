"""What the loop reports: step metrics to the logger and ``metrics.jsonl``, the monitor and its
best checkpoint, and early stopping on ``train.patience``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from medfm.tracking.base import Logger
from medfm.train import distributed as D
from medfm.train.checkpoint import save_checkpoint
from medfm.train.state import RunState

log = logging.getLogger(__name__)


def last_logged_step(path: Path) -> int:
    """The last step of ``metrics.jsonl`` (0 when there is none); a line cut short by a kill is
    dropped from the file, so the file stays valid JSON lines."""
    if not path.is_file():
        return 0
    text = path.read_text()
    lines, complete = text.splitlines(), text.endswith("\n")
    if lines and not complete:
        lines = lines[:-1]
        path.write_text("".join(f"{line}\n" for line in lines))
    return max((int(json.loads(line)["step"]) for line in lines), default=0)


def append_jsonl(run: RunState, record: dict) -> None:
    """Rank 0 keeps ``out_dir/metrics.jsonl``: the loss curve without needing MLflow."""
    if run.info.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        with open(run.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({k: v for k, v in record.items() if v is not None}) + "\n")


def log_step(
    run: RunState, logger: Logger, done: int, terms: dict, loss: float, speed: dict
) -> None:
    """The step's loss terms, learning rate and throughput, to ``metrics.jsonl`` and ``logger``.

    A resumed run skips the steps logged before it was interrupted (``run.logged_until``): the
    resume is exact, so their values are the ones already logged, and MLflow's history stays one
    value per step."""
    if done <= run.logged_until:
        return
    metrics = (
        {f"train/{k}": v for k, v in terms.items()}
        | {
            "train/loss": loss,
            "train/lr": run.sched.get_last_lr()[0],
        }
        | {f"train/{k}": v for k, v in speed.items()}
    )
    append_jsonl(run, {"step": done} | metrics)  # first: what resume reads to skip
    logger.log_metrics(metrics, step=done)


def _run_monitor(run: RunState, monitor, step: int, tc: DictConfig, logger: Logger) -> None:
    metrics = monitor(step) if run.info.is_main else {}
    if step > run.logged_until:  # else logged before an interruption (see log_step)
        append_jsonl(run, {"step": step} | {f"monitor/{k}": v for k, v in metrics.items()})
        logger.log_metrics({f"monitor/{k}": v for k, v in metrics.items()}, step=step)
    key = str(tc.monitor_metric)
    if (
        run.info.is_main
        and key in metrics
        and (run.best is None or metrics[key] > run.best["value"])
    ):
        run.best = {"metric": key, "value": float(metrics[key]), "step": step}
        save_checkpoint(run.out_dir / "best.pt", {"model": run.objective.state_dict(), **run.best})


def _patience_exhausted(run: RunState, step: int, tc: DictConfig) -> bool:
    """Early stopping: ``train.patience`` monitors in a row without a better monitor metric
    (decided on rank 0, agreed by every rank)."""
    patience = int(tc.get("patience") or 0)
    if not patience:
        return False
    stale = run.best is not None and step - run.best["step"] >= patience * int(tc.monitor_every)
    return D.mean_across(float(stale and run.info.is_main), run.info) > 0


def early_stop(run: RunState, monitor, done: int, tc: DictConfig, logger: Logger) -> bool:
    """Run the monitor every ``train.monitor_every`` steps; whether patience ran out."""
    if not (monitor and tc.get("monitor_every") and done % int(tc.monitor_every) == 0):
        return False
    _run_monitor(run, monitor, done, tc, logger)
    if not _patience_exhausted(run, done, tc):
        return False
    log.info(
        "Early stop at step %d: no better %s for train.patience=%s monitors",
        done,
        tc.monitor_metric,
        tc.patience,
    )
    return True
