"""Scoring a head under a protocol: fit per fold and seed, test metrics, aggregation.

``run_protocol`` turns any ``predict(fold, seed) -> (proba, classes)`` into one protocol entry of
``metrics.json`` (the schema is in :mod:`medfm.evaluation.run`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import numpy as np
from omegaconf import DictConfig

from medfm.evaluation.protocols import Protocol
from medfm.evaluation.tasks import EvalTask, Fold, aggregate
from medfm.heads.registry import HEADS, build_head
from medfm.metrics.classification import classification_report, multilabel_auc

log = logging.getLogger(__name__)

Predict = Callable[[Fold, int], tuple[np.ndarray, np.ndarray]]


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)``, the harmonic mean of two accuracies (0 when both are 0; NaN when either
    is NaN), as few-shot class-incremental papers (e.g. TEEN, Wang et al., NeurIPS 2023) report
    base and novel accuracy together."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return float("nan")
    return 0.0 if a + b == 0 else float(2 * a * b / (a + b))


def base_novel_accuracy(y_true, y_pred, base_classes) -> dict[str, float]:
    """``test_acc_base``, ``test_acc_novel`` and ``test_acc_hm`` of ``(n,)`` true and predicted
    labels: accuracy on the images of base classes and of novel classes (each predicted among
    all classes), and their :func:`harmonic_mean` (NaN for a group with no test image)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    is_base = np.isin(y_true, np.asarray(base_classes))

    def acc(mask: np.ndarray) -> float:
        return float(np.mean(y_pred[mask] == y_true[mask])) if mask.any() else float("nan")

    base, novel = acc(is_base), acc(~is_base)
    return {
        "test_acc_base": base,
        "test_acc_novel": novel,
        "test_acc_hm": harmonic_mean(base, novel),
    }


def score_fold(task: EvalTask, fold: Fold, proba: np.ndarray, classes, n_boot: int) -> dict:
    """Test metrics of one fold: the full classification report, or per-label AUCs. A loco fold
    whose held-out center has a single class gets NaN AUCs (with a warning) and its accuracy.
    An incremental fold adds base, novel and harmonic-mean accuracy
    (:func:`base_novel_accuracy`)."""
    report = _score_fold(task, fold, proba, classes, n_boot)
    if fold.base_classes is not None and not task.multilabel:
        predicted = np.asarray(classes)[np.argmax(proba, axis=1)]
        report.update(base_novel_accuracy(task.labels[fold.test], predicted, fold.base_classes))
    return report


def _score_fold(task: EvalTask, fold: Fold, proba: np.ndarray, classes, n_boot: int) -> dict:
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
    """Fit a feature head on the fold's train rows (val for its hyper-parameter); test proba.

    A multi-label task fits one binary head per label; a label the fold never (or always) saw
    is scored by its training prevalence. An incremental fold's base classes reach the heads
    whose ``fit`` takes ``base_classes`` (the prototype head: TEEN calibration of the novel
    prototypes); the other heads fit the same rows as they are."""

    def one(y: np.ndarray):
        head = build_head(name, cfg.eval, seed)
        y_tr, y_va = y[fold.train], y[fold.val]
        if len(np.unique(y_tr)) < 2:
            raise ValueError(f"{name}: the training rows of this protocol hold a single class")
        has_val = len(np.unique(y_va)) > 1
        extra = {}
        if (
            fold.base_classes is not None
            and "base_classes" in inspect.signature(head.fit).parameters
        ):
            extra["base_classes"] = fold.base_classes
        head.fit(
            X[fold.train],
            y_tr,
            X[fold.val] if has_val else None,
            y_va if has_val else None,
            **extra,
        )
        return head.predict_proba(X[fold.test]), head.classes_

    if not task.multilabel:
        proba, head_classes = one(task.labels)
        return _pad_classes(proba, head_classes, task.classes), task.classes
    scores = []
    for j in range(task.labels.shape[1]):
        y = task.labels[:, j]
        if len(np.unique(y[fold.train])) < 2:
            scores.append(np.full(len(fold.test), float(y[fold.train].mean())))
        else:
            scores.append(one(y)[0][:, 1])
    return np.stack(scores, axis=1), np.array([0, 1])


def run_protocol(predict: Predict, task: EvalTask, protocol: Protocol, seeds: int, n_boot: int):
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
    """Seeds only change resampled protocols and stochastic heads (as the registry marks them)."""
    return seeds if protocol.resampled or HEADS.get(head).stochastic else 1
