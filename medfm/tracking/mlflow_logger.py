"""MLflow implementation of :class:`medfm.tracking.base.Logger`, through ``MlflowClient``.

mlflow is imported lazily, so the rest of medfm imports fast. The client API (rather than
``mlflow.start_run``) keeps no global state, so nested runs and notebooks do not interfere.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)
_MAX_PARAM_CHARS = 500


class MLflowLogger:
    """One MLflow run through ``MlflowClient`` (mlflow imported lazily, as torchtune does): params
    in batches of 100, truncated to 500 characters; non-finite metrics dropped."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        *,
        artifact_location: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        for name in ("alembic", "mlflow.store.db.utils"):  # schema-migration chatter
            logging.getLogger(name).setLevel(logging.WARNING)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(experiment, artifact_location=artifact_location)
        )
        tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
        self.experiment_id = exp_id
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        self._closed = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` (values as strings, at most 500 characters each)."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log the finite values of ``metrics`` at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(step or 0))
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's files, under ``artifact_path``."""
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set each tag on the run."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def child(self, run_name: str) -> MLflowLogger:
        """A nested run under this one, in the same experiment."""
        return MLflowLogger(self.tracking_uri, self.experiment, run_name, parent_run_id=self.run_id)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` once; later calls do nothing."""
        if not self._closed:
            self.client.set_terminated(self.run_id, status=status)
            self._closed = True
