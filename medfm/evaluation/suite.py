"""``medfm evaluate``: every head, under every protocol, over seeds, next to its baselines.

encoder + data -> features (cached) of the encoder, of its random-init twin and raw pixels ->
heads fitted per protocol fold and seed -> ``{head: {protocol: metrics}}`` -> ``metrics.json``,
``metrics.md``, plots and one nested MLflow run per head and protocol.

Rows of the result are the encoder's heads (``linear``, ``knn``, ``gda``, ``prototype``,
``mlp``, ``finetune``, and for ``soup``: ``soup_uniform``, ``soup_greedy`` and
``finetune_best``), then the baselines of the same run: ``random:<head>`` (the same
architecture at random initialisation, feature heads) and ``pixels:linear`` (logistic
regression on the raw pixels).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from medfm.data.datasets import load_image
from medfm.evaluation.legacy_runner import write_json
from medfm.evaluation.plots import label_efficiency_curves, per_center_bars, roc_curves
from medfm.evaluation.protocols import Protocol, parse_protocols
from medfm.evaluation.tables import write_metrics_markdown
from medfm.evaluation.tasks import EvalTask, Fold, aggregate
from medfm.features.cache import cached_features, feature_key
from medfm.features.encoders import EvalEncoder
from medfm.features.extract import extract_features
from medfm.heads.registry import build_head
from medfm.metrics.classification import classification_report, multilabel_auc
from medfm.tracking.base import Logger

log = logging.getLogger(__name__)

FEATURE_HEADS = ("linear", "knn", "gda", "prototype", "mlp")
IMAGE_HEADS = ("finetune", "soup")
STOCHASTIC = ("mlp", "finetune")
MAX_PIXELS = 4096


def check_heads(heads: list[str]) -> None:
    unknown = [h for h in heads if h not in FEATURE_HEADS + IMAGE_HEADS]
    if unknown:
        raise ValueError(
            f"unknown head(s) {unknown}; choose from {', '.join(FEATURE_HEADS + IMAGE_HEADS)}"
        )


# ------------------------------------------------------------------------------ features


def cached_encoder_features(enc: EvalEncoder, rows: list[dict], dataset, cache_dir, progress: bool):
    pooling = str(enc.cfg.model.pooling)
    data = {
        k: enc.cfg.data.get(k)
        for k in ("image_size", "channels", "intensity_min", "intensity_max", "depth_size")
    }
    key = feature_key(enc.key, pooling, data, [r["path"] for r in rows])

    def compute() -> np.ndarray:
        model = enc.build()
        return extract_features(model, dataset, pooling, progress=progress)

    return cached_features(cache_dir, key, compute)


def pixel_features(dataset) -> np.ndarray | None:
    """Raw intensities flattened, average-pooled to at most 4096 values per image; None (with a
    warning) when the images differ in shape, e.g. a manifest of 2D images and 3D volumes, where
    raw pixels share no feature space."""
    rows, shape = [], None
    for i in range(len(dataset)):
        image = load_image(dataset, i)
        if shape is not None and tuple(image.shape) != shape:
            warnings.warn("images differ in shape: no pixels: baseline", stacklevel=2)
            return None
        shape = tuple(image.shape)
        pool = F.avg_pool3d if image.ndim == 4 else F.avg_pool2d
        while image.numel() > MAX_PIXELS:
            image = pool(image, 2)
        rows.append(image.flatten().numpy())
    return np.stack(rows).astype(np.float32)


# ------------------------------------------------------------------------- scoring


def score_fold(task: EvalTask, fold: Fold, proba: np.ndarray, classes, n_boot: int) -> dict:
    """Test metrics of one fold: the full classification report, or per-label AUCs. A loco fold
    whose held-out center has a single class gets NaN AUCs (with a warning) and its accuracy."""
    if task.multilabel:
        result = multilabel_auc(task.labels[fold.test], proba)
        return {"test_auc": result["mean"], "per_label_auc": result["per_label"]}
    y_test = task.labels[fold.test]
    if len(np.unique(y_test)) < 2:
        log.warning("held-out center %s has a single class: no AUC for this fold", fold.held_out)
        predicted = np.asarray(classes)[np.argmax(proba, axis=1)]
        nan = float("nan")
        return {
            "test_auc": nan,
            "test_auc_ci95": [nan, nan],
            "test_acc": float(np.mean(predicted == y_test)),
        }
    return classification_report(
        y_test,
        proba,
        classes,
        groups=task.groups(fold.test),
        centers=task.centers(fold.test),
        n_boot=n_boot,
    )


def _pad_classes(proba: np.ndarray, head_classes, classes) -> np.ndarray:
    """Probabilities over every class of the task (zero for classes the fold never trained on,
    as when the training centers of a loco fold lack a class)."""
    out = np.zeros((len(proba), len(classes)))
    out[:, np.searchsorted(classes, head_classes)] = proba
    return out


def fit_predict(name: str, X: np.ndarray, task: EvalTask, fold: Fold, cfg: DictConfig, seed: int):
    """Fit a feature head on the fold's train rows (val for its hyper-parameter); test proba."""

    def one(y: np.ndarray):
        head = build_head(name, cfg.eval, seed)
        y_tr, y_va = y[fold.train], y[fold.val]
        if len(np.unique(y_tr)) < 2:
            raise ValueError(f"{name}: the training rows of this protocol hold a single class")
        has_val = len(np.unique(y_va)) > 1
        head.fit(X[fold.train], y_tr, X[fold.val] if has_val else None, y_va if has_val else None)
        return head.predict_proba(X[fold.test]), head.classes_

    if not task.multilabel:
        proba, head_classes = one(task.labels)
        return _pad_classes(proba, head_classes, task.classes), task.classes
    scores = []
    for j in range(task.labels.shape[1]):
        y = task.labels[:, j]
        if len(np.unique(y[fold.train])) < 2:  # a label never (or always) seen: its prevalence
            scores.append(np.full(len(fold.test), float(y[fold.train].mean())))
        else:
            scores.append(one(y)[0][:, 1])
    return np.stack(scores, axis=1), np.array([0, 1])


def run_protocol(predict, task: EvalTask, protocol: Protocol, seeds: int, n_boot: int):
    """``predict(fold, seed) -> (proba, classes)`` over seeds and folds; the aggregated metrics
    and the first repetition's test predictions (for ROC curves).

    Loco: each held-out center's metrics are first averaged over seeds (its ``per_center``
    entry), then over centers (mean ± std over the ``n_folds`` centers)."""
    by_fold: dict[str, list[dict]] = {}
    sizes: dict[str, int] = {}
    first = None
    for seed in range(seeds):
        for fold in task.folds(protocol, seed):
            proba, classes = predict(fold, seed)
            result = score_fold(task, fold, proba, classes, n_boot)
            by_fold.setdefault(fold.held_out, []).append(result)
            sizes[fold.held_out] = len(fold.test)
            first = first or (task.labels[fold.test], proba, classes)
    if protocol.kind != "loco":
        return aggregate(by_fold[""]), first
    per_center = {c: aggregate(runs) for c, runs in by_fold.items()}
    metrics = aggregate(list(per_center.values()))
    metrics.pop("per_center", None)
    metrics.update(n_folds=len(per_center), n_seeds=seeds)
    metrics["per_center"] = {
        c: {"test_auc": r["test_auc"], "test_acc": r.get("test_acc"), "n": sizes[c]}
        for c, r in per_center.items()
    }
    return metrics, first


def n_seeds(head: str, protocol: Protocol, seeds: int) -> int:
    """Seeds only change resampled protocols and stochastic heads."""
    return seeds if protocol.resampled or head in STOCHASTIC else 1


# ---------------------------------------------------------------------------- outputs


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


def log_nested(metrics: dict, logger: Logger) -> None:
    """One nested MLflow run per head and protocol, holding its scalar metrics."""
    for row, by_protocol in metrics.items():
        for protocol, values in by_protocol.items():
            child = logger.child(f"{row} | {protocol}")
            child.log_params({"head": row, "protocol": protocol})
            child.log_metrics(
                {k: v for k, v in values.items() if isinstance(v, int | float) and np.isfinite(v)}
            )
            child.close()


def ensure_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress_bar(total: int, progress: bool):
    return tqdm(total=total, desc="evaluate", unit="run", disable=not progress)


def protocols_of(cfg: DictConfig) -> list[Protocol]:
    specs = cfg.eval.protocols
    return parse_protocols(specs if isinstance(specs, str) else list(specs))
