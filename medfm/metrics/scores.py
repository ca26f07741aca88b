"""Classification metrics as pure functions of arrays (AUC, accuracy)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def _check(y_true: np.ndarray, scores: np.ndarray) -> None:
    if len(y_true) != len(scores):
        raise ValueError(f"labels ({len(y_true)}) and predictions ({len(scores)}) differ in length")
    if len(np.unique(y_true)) < 2:
        raise ValueError(
            "the test split has a single class; AUC is undefined. Use a split with "
            "at least two classes"
        )


def auc(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray | None = None) -> float:
    """ROC AUC: binary (score of the second class), or macro one-vs-rest for more classes.

    Args:
        y_true: ``(n,)`` labels.
        proba: ``(n, n_classes)`` probabilities, columns ordered as ``classes``.
    """
    y_true, proba = np.asarray(y_true), np.asarray(proba)
    _check(y_true, proba)
    classes = np.arange(proba.shape[1]) if classes is None else np.asarray(classes)
    if proba.shape[1] == 2:
        return float(roc_auc_score(y_true == classes[1], proba[:, 1]))
    present = np.isin(classes, y_true)
    if not present.all():  # classes absent from the test split cannot be scored one-vs-rest
        return float(
            np.mean(
                [
                    roc_auc_score(y_true == c, proba[:, i])
                    for i, c in enumerate(classes)
                    if present[i]
                ]
            )
        )
    return float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples whose predicted label equals the true one."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"labels ({len(y_true)}) and predictions ({len(y_pred)}) differ in length")
    return float(np.mean(y_true == y_pred))
