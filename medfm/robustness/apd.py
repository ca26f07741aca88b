"""Average performance drop (APD): how much a head loses on medical centers it has not seen.

PathoROB (Kömen et al. 2025) reports the APD of downstream heads; de Jong et al. 2025 ("Current
Pathology Foundation Models are unrobust to Medical Center Differences") the out-of-center
generalisation it measures. :func:`performance_drop` is the formula on given predictions;
:func:`average_performance_drop` runs it over the leave-one-center-out folds of
:func:`medfm.evaluation.protocols.loco_folds`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from medfm.evaluation.protocols import loco_folds
from medfm.features.neighbours import as_embeddings
from medfm.heads.linear import LinearProbe
from medfm.metrics.scores import auc
from medfm.robustness.checks import check_groups, check_labels


def performance_drop(
    y_true: np.ndarray,
    proba_in: np.ndarray,
    y_true_out,
    proba_out,
    classes: np.ndarray | None = None,
) -> float:
    """Average performance drop (APD) of a head from in-center to out-of-center test data.

    ``APD = mean_j(AUC_out_j / AUC_in) - 1``: the mean relative change in ROC AUC
    (:func:`medfm.metrics.scores.auc`) when the head, trained on some centers, is tested on the
    centers it has not seen (out, one or several test sets j) instead of held-out samples from
    its training centers (in). This is PathoROB's APD reduction (Kömen et al. 2025; mean over
    splits of the score relative to the baseline, minus one) with AUC for the score and the
    in-center test as the baseline. 0 means no drop; -0.1 means out-of-center AUC is 10 % lower;
    positive values mean the head does better out of center.

    Args:
        y_true, proba_in: in-center test labels ``(n,)`` and probabilities ``(n, C)``.
        y_true_out, proba_out: one out-of-center test set in the same form, or sequences of
            several (one per unseen center), whose relative changes are averaged.
        classes: column order of the probabilities, as in :func:`medfm.metrics.scores.auc`.
    """
    several = isinstance(proba_out, (list, tuple)) and len(proba_out) > 0
    several = several and np.ndim(proba_out[0]) == 2
    if several and len(y_true_out) != len(proba_out):
        raise ValueError(
            f"y_true_out ({len(y_true_out)} sets) and proba_out ({len(proba_out)} sets) must pair "
            "up, one label array per probability array"
        )
    outs = list(zip(y_true_out, proba_out, strict=True)) if several else [(y_true_out, proba_out)]
    auc_in = auc(y_true, proba_in, classes)
    if auc_in <= 0:
        raise ValueError("the in-center AUC is 0; a relative drop is undefined")
    return float(np.mean([auc(y, p, classes) / auc_in for y, p in outs]) - 1)


def average_performance_drop(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    groups: np.ndarray | None = None,
    seed: int = 0,
    *,
    test_size: float = 0.3,
    head_factory: Callable[[], object] | None = None,
) -> float | None:
    """APD over the leave-one-center-out folds: for each held-out center, a head trained on
    ``1 - test_size`` of the other centers' groups (patients; samples without ``groups``) is
    tested on the remaining ``test_size`` of them (in) and on the held-out center (out); the
    :func:`performance_drop` of each fold is averaged.

    ``head_factory()`` returns an unfitted scikit-learn-style classifier (default
    :class:`medfm.heads.linear.LinearProbe`). A fold whose train, in- or out-of-center test set
    holds a single class, or whose test sets hold a class the head was not trained on, has no
    AUC and is skipped; ``None`` when every fold is.
    """
    x = as_embeddings(embeddings)
    bio, center = check_labels(x, bio, center)
    groups = check_groups(groups, len(bio))
    factory = LinearProbe if head_factory is None else head_factory
    drops = []
    for _, held_out in loco_folds(center):
        inside = np.flatnonzero(~held_out)
        split = GroupShuffleSplit(1, test_size=test_size, random_state=seed)
        units = groups[inside] if groups is not None else inside
        fit, test = next(split.split(inside, groups=units))
        fit, test, out = inside[fit], inside[test], np.flatnonzero(held_out)
        unseen = np.setdiff1d(bio[np.r_[test, out]], bio[fit]).size
        if unseen or min(len(np.unique(bio[s])) for s in (fit, test, out)) < 2:
            continue
        head = factory().fit(x[fit], bio[fit])
        drops.append(
            performance_drop(
                bio[test],
                head.predict_proba(x[test]),
                bio[out],
                head.predict_proba(x[out]),
                head.classes_,
            )
        )
    return float(np.mean(drops)) if drops else None
