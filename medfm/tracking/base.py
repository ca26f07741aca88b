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
    run_id: str | None
    tracking_uri: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def child(self, run_name: str) -> Logger: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullLogger:
    """Logs nothing; used when tracking is off and on non-zero ranks."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def child(self, run_name: str) -> NullLogger:
        return self

    def close(self, status: str = "FINISHED") -> None:
        pass


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def local_tracking_uri(out_dir: str | os.PathLike) -> str:
    """A sqlite MLflow store inside ``out_dir`` (used when no tracking URI is configured)."""
    return f"sqlite:///{(Path(out_dir) / 'mlflow.db').resolve()}"


def make_logger(
    tracking_cfg: Mapping[str, Any], out_dir: str | os.PathLike, run_name: str | None = None
) -> Logger:
    """MLflow logger for ``tracking.enabled`` on rank 0, else :class:`NullLogger`.

    The URI is ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite store in ``out_dir``.
    """
    if not tracking_cfg.get("enabled", True) or not is_rank_zero():
        return NullLogger()
    from medfm.tracking.mlflow_logger import MLflowLogger

    uri = tracking_cfg.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    artifacts = None
    if not uri:
        uri = local_tracking_uri(out_dir)
        artifacts = (Path(out_dir) / "mlartifacts").resolve().as_uri()
    return MLflowLogger(
        uri,
        str(tracking_cfg.get("experiment") or "medfm"),
        run_name or tracking_cfg.get("run_name"),
        artifact_location=artifacts,
    )
