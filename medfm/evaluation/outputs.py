"""What ``medfm evaluate`` writes: ``metrics.json``, ``metrics.md``, the plots and the nested MLflow
runs. Every file goes through the one atomic writer (:mod:`medfm.io`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfm.evaluation.plots import label_efficiency_curves, per_center_bars, roc_curves
from medfm.evaluation.tables import write_metrics_markdown
from medfm.io import write_json
from medfm.tracking.base import Logger


def write_outputs(metrics: dict, roc: dict, out_dir: Path, title: str, logger: Logger) -> list:
    """metrics.json, metrics.md and the plots, each logged as an MLflow artifact."""
    paths = [
        write_json(metrics, out_dir / "metrics.json"),
        write_metrics_markdown(metrics, out_dir / "metrics.md", title=title),
    ]
    if roc:
        paths.append(roc_curves(roc, out_dir / "roc_curves.png", title))
    for protocol in ("full", "loco"):
        paths.append(
            per_center_bars(
                metrics,
                protocol,
                out_dir / f"per_center_{protocol}.png",
                f"{title}: per-center test AUC ({protocol})",
            )
        )
    paths.append(label_efficiency_curves(metrics, out_dir / "label_efficiency.png", title))
    paths = [p for p in paths if p is not None]
    for path in paths:
        logger.log_artifact(path, "evaluation")
    return paths


def scalar_metrics(values: dict) -> dict[str, float]:
    """The finite int and float entries of one protocol entry."""
    return {
        k: v
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
    }


def log_nested(metrics: dict, logger: Logger) -> None:
    """One nested MLflow run per head and protocol, holding its scalar metrics, and the test AUC
    of each in the parent run as ``eval/<row>/<protocol>/test_auc``."""
    parent = {}
    for row, by_protocol in metrics.items():
        for protocol, values in by_protocol.items():
            child = logger.child(f"{row} | {protocol}")
            child.log_params({"head": row, "protocol": protocol})
            scalars = scalar_metrics(values)
            child.log_metrics(scalars)
            child.close()
            if "test_auc" in scalars:
                parent[f"eval/{_metric_name(row)}/{_metric_name(protocol)}/test_auc"] = scalars[
                    "test_auc"
                ]
    if parent:
        logger.log_metrics(parent)


def _metric_name(name: str) -> str:
    """An MLflow-safe metric name part (``random:linear`` -> ``random_linear``)."""
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)
