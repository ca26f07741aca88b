"""What is encoded: how well the medical center and the biology can each be read from embeddings.

de Jong et al. 2025 ("Current Pathology Foundation Models are unrobust to Medical Center
Differences") show that foundation-model features predict the center better than the biology.
Two readers measure both: a leave-one-out kNN vote and out-of-fold predictions of a standardised
logistic regression, whose folds keep each group (patient) together. The same out-of-fold
predictions feed the error attribution of the audit (:mod:`medfm.robustness.attribution`).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medfm.features.neighbours import as_embeddings, knn_search
from medfm.robustness.checks import check_groups, check_labels
from medfm.robustness.k_selection import vote_balanced_accuracy


def cv_splitter(
    labels: np.ndarray, groups: np.ndarray | None, seed: int = 0, cv: int = 5
) -> StratifiedKFold | StratifiedGroupKFold:
    """Stratified ``cv``-fold cross-validation, shuffled by ``seed``: ``StratifiedGroupKFold``
    (no group split across train and test, at most one fold per group) when ``groups`` are
    given, else ``StratifiedKFold`` with at most as many folds as the rarest class has samples
    (and at least 2)."""
    if groups is None:
        splits = min(cv, int(np.unique(labels, return_counts=True)[1].min()))
        return StratifiedKFold(max(2, splits), shuffle=True, random_state=seed)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError("groups has a single value; cross-validation needs two or more")
    return StratifiedGroupKFold(min(cv, n_groups), shuffle=True, random_state=seed)


def out_of_fold_predictions(
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    seed: int = 0,
    cv: int = 5,
) -> np.ndarray:
    """``(n,)`` class of every sample predicted by a standardised logistic regression that never
    saw it, nor (with ``groups``) any sample of its group: folds from :func:`cv_splitter`."""
    x = as_embeddings(embeddings).astype(np.float64)
    labels = np.asarray(labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splitter = cv_splitter(labels, groups, seed, cv)
    return cross_val_predict(model, x, labels, groups=groups, cv=splitter)


def center_vs_bio(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    k: int = 10,
    groups: np.ndarray | None = None,
    seed: int = 0,
    *,
    cv: int = 5,
    backend: str = "auto",
) -> dict[str, float]:
    """How well the medical center and the biology can each be predicted from the embeddings.

    de Jong et al. 2025 show that foundation-model features predict the center better than the
    biology; this measures both with the same two readers:

    * ``knn_*_acc``: leave-one-out majority vote of the k nearest neighbours (itself and its
      group excluded), :func:`medfm.robustness.k_selection.vote_balanced_accuracy`;
    * ``linear_*_acc``: :func:`out_of_fold_predictions` over ``cv`` stratified folds, grouped
      (``StratifiedGroupKFold``) so that no group (patient) is split across train and test when
      ``groups`` are given; ``seed`` shuffles the folds.

    Returns:
        ``{"knn_center_acc", "knn_bio_acc", "linear_center_acc", "linear_bio_acc"}``, balanced
        accuracies (chance is ``1 / n_classes``).
    """
    x = as_embeddings(embeddings)
    bio, center = check_labels(x, bio, center)
    groups = check_groups(groups, len(bio))
    neighbours = knn_search(x, k, groups, backend=backend)[0]

    def linear(labels: np.ndarray) -> float:
        predicted = out_of_fold_predictions(x, labels, groups, seed, cv)
        return float(balanced_accuracy_score(labels, predicted))

    return {
        "knn_center_acc": vote_balanced_accuracy(neighbours, center, [k])[k],
        "knn_bio_acc": vote_balanced_accuracy(neighbours, bio, [k])[k],
        "linear_center_acc": linear(center),
        "linear_bio_acc": linear(bio),
    }
