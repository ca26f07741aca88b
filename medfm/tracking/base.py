"""The logger interface every run writes to, a no-op implementation, and the factory.

Like torchtune's ``MetricLoggerInterface``: code logs params, metrics and artifacts without knowing
whether MLflow is behind it; only rank 0 of a distributed job gets a real logger.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Logger(Protocol):
    """What every run writes to: MLflow (:class:`~medfm.tracking.mlflow_logger.MLflowLogger`)
    or nothing (:class:`NullLogger`)."""

    run_id: str | None
    tracking_uri: str | None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's parameters (flattened config keys)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values at ``step``; non-finite values are dropped."""

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Attach a file or a folder to the run, under ``artifact_path``."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set string tags on the run."""

    def child(self, run_name: str) -> Logger:
        """A nested run under this one."""

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED)."""


class NullLogger:
    """Logs nothing; used when tracking is off and on non-zero ranks."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Discard ``params``."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Discard ``metrics``."""

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Discard the artifact (the file stays where it is)."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Discard ``tags``."""

    def child(self, run_name: str) -> NullLogger:
        """Itself: nested runs of nothing are nothing."""
        return self

    def close(self, status: str = "FINISHED") -> None:
        """Nothing to close."""


def is_rank_zero() -> bool:
    """True outside ``torchrun`` and on its rank 0 (``RANK`` unset or 0)."""
    return int(os.environ.get("RANK", "0")) == 0


def local_tracking_uri(out_dir: str | os.PathLike) -> str:
    """A sqlite MLflow store inside ``out_dir`` (used when no tracking URI is configured)."""
    return f"sqlite:///{(Path(out_dir) / 'mlflow.db').resolve()}"


def make_logger(
    tracking_cfg: Mapping[str, Any],
    out_dir: str | os.PathLike,
    run_name: str | None = None,
    run_id: str | None = None,
) -> Logger:
    """MLflow logger for ``tracking.enabled`` on rank 0, else :class:`NullLogger`.

    The URI is ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite store in ``out_dir``.
    Calls are journaled in ``out_dir/mlflow-spool`` and sent in the background, so an unreachable
    server never stops the caller (``medfm sync OUT`` sends what is left). ``run_id`` continues
    that MLflow run instead of starting a new one.
    """
    if not tracking_cfg.get("enabled", True) or not is_rank_zero():
        return NullLogger()
    from medfm.tracking.mlflow_logger import MLflowLogger, spool_dir

    uri = tracking_cfg.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    artifacts = None
    if not uri:
        uri = local_tracking_uri(out_dir)
        artifacts = (Path(out_dir) / "mlartifacts").resolve().as_uri()
    logger = MLflowLogger(
        uri,
        str(tracking_cfg.get("experiment") or "medfm"),
        run_name or tracking_cfg.get("run_name"),
        spool_dir=spool_dir(out_dir),
        artifact_location=artifacts,
    )
    if run_id:
        logger.continue_run(run_id=run_id)
    return logger


def tracking_state(logger: Logger) -> dict[str, str] | None:
    """What a checkpoint keeps to continue ``logger``'s run on resume (None for no run)."""
    state = {"run_id": logger.run_id, "spool_id": getattr(logger, "spool_id", None)}
    state = {k: v for k, v in state.items() if v}
    return state or None


def continue_run(logger: Logger, state: Mapping[str, Any] | None) -> None:
    """Point a fresh ``logger`` at the run a checkpoint's :func:`tracking_state` names."""
    resume = getattr(logger, "continue_run", None)
    if state and callable(resume):
        resume(run_id=state.get("run_id"), spool_id=state.get("spool_id"))
