"""Downstream classification metrics as pure functions of arrays.

Beyond :func:`medfm.metrics.scores.auc` and :func:`~medfm.metrics.scores.accuracy`: balanced
accuracy, macro F1, top-label expected calibration error, a (patient-)grouped percentile bootstrap
CI of the AUC (through :mod:`medfm.metrics.bootstrap`), multi-label AUC (ChestMNIST-like) and
one :func:`classification_report` that gathers them, with a per-center breakdown.

Shapes: ``y_true (n,)`` labels; ``proba (n, n_classes)`` probabilities whose columns follow
``classes`` (``np.arange(n_classes)`` when not given), as a head's ``predict_proba`` returns them.
The predicted class is ``classes[argmax(proba)]`` (ties go to the first column).
"""

from __future__ import annotations

import numpy as np

from medfm.metrics.bootstrap import check_bootstrap_args, grouped_bootstrap, resampling_units
from medfm.metrics.scores import accuracy, auc

# ----------------------------------------------------------------------------- checks


def _plain(value):
    """A numpy scalar as the Python value (for dict keys that print and serialise cleanly)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_length(y_true: np.ndarray, other: np.ndarray, name: str = "predictions") -> None:
    if len(y_true) != len(other):
        raise ValueError(f"labels ({len(y_true)}) and {name} ({len(other)}) differ in length")


def _check_two_classes(y_true: np.ndarray, metric: str = "AUC") -> None:
    if len(np.unique(y_true)) < 2:
        raise ValueError(
            f"the test split has a single class; {metric} is undefined. Use a split with "
            "at least two classes"
        )


def _check_proba(y_true, proba, classes):
    """``(y_true, proba, classes)`` as arrays, with every label one of ``classes``."""
    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=float)
    _check_length(y_true, proba)
    if proba.ndim != 2:
        raise ValueError(
            f"proba has shape {proba.shape}; pass (n_samples, n_classes) probabilities, "
            "e.g. a head's predict_proba(X)"
        )
    classes = np.arange(proba.shape[1]) if classes is None else np.asarray(classes)
    if classes.ndim != 1 or len(classes) != proba.shape[1]:
        raise ValueError(
            f"proba has {proba.shape[1]} columns but classes has {classes.size} entries; pass "
            "one class per column, in column order (e.g. the head's classes_)"
        )
    if not np.isfinite(proba).all():
        raise ValueError("proba contains NaN or infinite values; check the head's output")
    unknown = np.setdiff1d(y_true, classes)
    if unknown.size:
        raise ValueError(
            f"labels {unknown[:5].tolist()} are not among classes {classes.tolist()}; pass the "
            "classes the probabilities were computed for"
        )
    return y_true, proba, classes


def per_sample(values, n: int, name: str, against: str = "labels") -> np.ndarray | None:
    """``values`` as a 1-D array with one entry per sample (``None`` stays ``None``); a clear
    error naming both lengths otherwise. ``name`` is plural (``"groups"``, ``"centers"``)."""
    if values is None:
        return None
    values = np.asarray(values)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(
            f"{against} ({n}) and {name} ({len(values)}) differ in length; pass one {name[:-1]} "
            "label per sample"
        )
    return values


def _predicted(proba: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return classes[np.argmax(proba, axis=1)]


# ----------------------------------------------------------------------------- label metrics


def _per_label_counts(y_true, y_pred):
    """``(labels, tp, fp, fn)`` for every label in ``y_true`` or ``y_pred``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_length(y_true, y_pred)
    if not len(y_true):
        raise ValueError("the test split is empty; pass at least one labelled sample")
    labels = np.unique(np.concatenate([y_true, y_pred]))
    hit = y_true == y_pred
    tp = np.array([np.sum(hit & (y_true == c)) for c in labels], dtype=float)
    fp = np.array([np.sum(y_pred == c) for c in labels], dtype=float) - tp
    fn = np.array([np.sum(y_true == c) for c in labels], dtype=float) - tp
    return labels, tp, fp, fn


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (as scikit-learn's
    ``balanced_accuracy_score``); a class only predicted, never true, has no recall and is left
    out. With a single class in ``y_true`` it equals the accuracy.

    >>> balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1])  # recalls 2/3 and 1
    0.8333333333333333
    """
    _, tp, _, fn = _per_label_counts(y_true, y_pred)
    present = tp + fn > 0
    return float(np.mean(tp[present] / (tp + fn)[present]))


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 ``2 tp / (2 tp + fp + fn)`` over every class in
    ``y_true`` or ``y_pred`` (scikit-learn's ``f1_score(average="macro")``); a class predicted but
    never true scores 0.
    """
    _, tp, fp, fn = _per_label_counts(y_true, y_pred)
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def expected_calibration_error(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray | None = None,
    n_bins: int = 15,
) -> float:
    """Top-label expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural
    Networks"), with ``n_bins`` equal-width bins.

    Each sample's confidence is its largest probability, and it is correct when
    ``classes[argmax(proba)] == y_true``. Bin ``m`` (1-based) holds the confidences in
    ``((m - 1) / n_bins, m / n_bins]``; a confidence of exactly 0 joins the first bin. Then
    ``ECE = sum_m |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|`` (empty bins add nothing).

    Args:
        y_true: ``(n,)`` labels.
        proba: ``(n, n_classes)`` probabilities in ``[0, 1]``, columns ordered as ``classes``.
    """
    y_true, proba, classes = _check_proba(y_true, proba, classes)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r} must be a positive integer, e.g. 15")
    n_bins = int(n_bins)
    if not len(y_true):
        raise ValueError("the test split is empty; pass at least one labelled sample")
    if proba.min() < 0 or proba.max() > 1:
        raise ValueError(
            f"proba ranges over [{proba.min():.3g}, {proba.max():.3g}]; calibration needs "
            "probabilities in [0, 1] (apply a softmax to logits)"
        )
    confidence = proba.max(axis=1)
    correct = (_predicted(proba, classes) == y_true).astype(float)
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner_edges, confidence, side="left")  # right-closed bins
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(
        np.bincount(bins, correct, minlength=n_bins) - np.bincount(bins, confidence, n_bins)
    )  # per bin: |sum correct - sum confidence| = |B_m| * |acc - conf|
    return float(gap[count > 0].sum() / len(y_true))


# ----------------------------------------------------------------------------- AUC bootstrap


def _weighted_binary_auc(weights: np.ndarray, positive: np.ndarray, score: np.ndarray):
    """Mann-Whitney AUC of ``score`` for each row of sample multiplicities.

    ``weights (B, n)`` counts how often each sample was drawn; ties count 1/2. Returns
    ``(auc (B,), n_positive (B,))``; ``auc`` is NaN where a row lacks positives or negatives.
    """
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # one per distinct score
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)  # (B, n_distinct)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
    wins = np.sum(pos * (below + 0.5 * neg), axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return wins / (n_pos * n_neg), n_pos


def _weighted_auc(weights, y_true, proba, classes) -> np.ndarray:
    """``(B,)``: :func:`medfm.metrics.scores.auc` of each resample given as multiplicities
    ``weights (B, n)`` -- binary on the second column, else the macro one-vs-rest mean over the
    classes present in the resample. NaN where a resample holds a single class.
    """
    weights = np.asarray(weights, dtype=float)
    columns = [1] if len(classes) == 2 else range(len(classes))
    total = np.zeros(len(weights))
    present = np.zeros(len(weights))
    for i in columns:
        value, n_pos = _weighted_binary_auc(weights, y_true == classes[i], proba[:, i])
        total += np.where(n_pos > 0, value, 0.0)  # classes absent from the resample are skipped
        present += n_pos > 0
    n_classes = np.stack([weights @ (y_true == c) for c in classes], axis=1)
    single = np.count_nonzero(n_classes, axis=1) < 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(single, np.nan, total / present)


def bootstrap_auc_ci(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """``(lo, hi)`` percentile bootstrap confidence interval (95 % by default) of
    :func:`medfm.metrics.scores.auc`, by the one grouped bootstrap
    (:func:`medfm.metrics.bootstrap.grouped_bootstrap`, Efron & Tibshirani 1993).

    Each of ``n_boot`` replicates draws, with replacement, as many units as there are: test
    samples, or whole ``groups`` (e.g. patients) when given -- images of one patient are not
    independent, and resampling them one by one would give too narrow an interval. The AUC of
    each resample is computed for all replicates at once from sample multiplicities (a weighted
    Mann-Whitney / mid-rank count, equal to ``auc(y_true[idx], proba[idx])`` on the drawn
    indices), so 1000 replicates cost little.

    A resample holding a single class has no AUC; such replicates are redrawn, up to 100 rounds
    (each round succeeds with probability at least 1/2 when units are single-class, so this cap
    is a safeguard), and any still single-class afterwards are dropped. Conditioning on two
    classes this way makes the interval slightly optimistic for tiny or extremely unbalanced
    test splits.

    Args:
        y_true: ``(n,)`` labels with at least two classes.
        proba: ``(n, n_classes)`` probabilities, columns ordered as ``classes``.
        groups: optional ``(n,)`` group (patient) label per sample.
        n_boot: number of replicates; ``alpha``: 1 - confidence level; ``seed``: the RNG seed.
    """
    return _auc_bootstrap(y_true, [proba], classes, groups, n_boot, alpha, seed)


def bootstrap_auc_gain_ci(
    y_true: np.ndarray,
    proba: np.ndarray,
    proba_reference: np.ndarray,
    classes: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """``(lo, hi)`` paired percentile bootstrap CI of ``auc(proba) - auc(proba_reference)`` on
    the same test samples (Efron & Tibshirani 1993; the paired design of DeLong et al. 1988).

    Both models are scored on every replicate's *same* resample, so the interval reflects the
    difference between them and not the spread of either AUC alone: two encoders whose AUCs
    each have a wide CI can still differ clearly. Resampling, grouping (patients) and redrawing
    single-class replicates are as in :func:`bootstrap_auc_ci`; an interval above 0 says the
    first model ranks this test set better than the reference.
    """
    return _auc_bootstrap(y_true, [proba, proba_reference], classes, groups, n_boot, alpha, seed)


def _auc_bootstrap(y_true, probas, classes, groups, n_boot, alpha, seed) -> tuple[float, float]:
    """The grouped bootstrap CI of ``auc(probas[0])``, or of ``auc(probas[0]) - auc(probas[1])``
    on the same replicates."""
    checked = [_check_proba(y_true, proba, classes) for proba in probas]
    y_true, classes = checked[0][0], checked[0][2]
    _check_two_classes(y_true)
    check_bootstrap_args(n_boot, alpha)
    units = resampling_units(len(y_true), per_sample(groups, len(y_true), "groups"))

    def statistic(unit_counts: np.ndarray) -> np.ndarray:
        weights = unit_counts[:, units]
        aucs = [_weighted_auc(weights, y_true, proba, classes) for _, proba, _ in checked]
        return aucs[0] - aucs[1] if len(aucs) == 2 else aucs[0]

    return grouped_bootstrap(
        statistic, units, n_boot=n_boot, alpha=alpha, seed=seed, redraw_undefined=True
    )


# ----------------------------------------------------------------------------- task-specific


def multilabel_auc(y_true: np.ndarray, scores: np.ndarray) -> dict:
    """Per-label ROC AUC of a multi-label task (e.g. ChestMNIST's 14 findings).

    Args:
        y_true: ``(n, L)`` 0/1 (or boolean) indicators.
        scores: ``(n, L)`` scores or probabilities, one column per label.

    Returns:
        ``{"per_label": [L floats], "mean": float, "skipped": [label indices]}``. A label whose
        column in ``y_true`` holds a single value has no AUC: it is reported as NaN, listed in
        ``skipped``, and left out of ``mean`` (the mean over the defined labels).
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=float)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise ValueError(
            f"labels {y_true.shape} and scores {scores.shape} must both be (n_samples, n_labels)"
        )
    if not np.isin(y_true, [0, 1]).all():
        raise ValueError("multi-label y_true must hold 0/1 indicators, one column per label")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values; check the head's output")
    ones = np.ones((1, len(y_true)))
    per_label = [
        float(_weighted_binary_auc(ones, y_true[:, j] == 1, scores[:, j])[0][0])
        for j in range(y_true.shape[1])
    ]
    skipped = [j for j, value in enumerate(per_label) if np.isnan(value)]
    if len(skipped) == len(per_label):
        raise ValueError(
            "every label has a single class in the test split; AUC is undefined. Use a split "
            "where at least one label has positives and negatives"
        )
    return {"per_label": per_label, "mean": float(np.nanmean(per_label)), "skipped": skipped}


# ----------------------------------------------------------------------------- report


def _per_center(y_true, proba, classes, centers) -> dict:
    y_pred = _predicted(proba, classes)
    out = {}
    for center in np.unique(centers):
        mine = centers == center
        single = len(np.unique(y_true[mine])) < 2
        out[_plain(center)] = {
            "test_auc": float("nan") if single else auc(y_true[mine], proba[mine], classes),
            "test_acc": accuracy(y_true[mine], y_pred[mine]),
            "n": int(mine.sum()),
        }
    return out


def classification_report(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    centers: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Every downstream metric of a classification head's test predictions in one dict.

    Returns ``{"test_auc", "test_auc_ci95": [lo, hi], "test_acc", "test_bacc", "test_f1",
    "test_ece"}`` (:func:`~medfm.metrics.scores.auc`, :func:`bootstrap_auc_ci` resampling
    ``groups`` (patients) when given, accuracy, :func:`balanced_accuracy`, :func:`f1_macro`,
    :func:`expected_calibration_error` with 15 bins), plus, when ``centers`` is given,
    ``"per_center": {center: {"test_auc", "test_acc", "n"}}`` where ``test_auc`` is NaN for a
    center whose samples hold a single class.
    """
    y_true, proba, classes = _check_proba(y_true, proba, classes)
    _check_two_classes(y_true)
    groups = per_sample(groups, len(y_true), "groups")
    centers = per_sample(centers, len(y_true), "centers")
    y_pred = _predicted(proba, classes)
    lo, hi = bootstrap_auc_ci(y_true, proba, classes, groups, n_boot=n_boot, seed=seed)
    report = {
        "test_auc": auc(y_true, proba, classes),
        "test_auc_ci95": [lo, hi],
        "test_acc": accuracy(y_true, y_pred),
        "test_bacc": balanced_accuracy(y_true, y_pred),
        "test_f1": f1_macro(y_true, y_pred),
        "test_ece": expected_calibration_error(y_true, proba, classes),
    }
    if centers is not None:
        report["per_center"] = _per_center(y_true, proba, classes, centers)
    return report
