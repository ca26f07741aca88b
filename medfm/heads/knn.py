"""The kNN head: cosine nearest neighbours with temperature-weighted votes.

Neighbours come from :func:`medfm.features.neighbours.knn_search`, the one exact cosine kNN
search of medfm (the robustness index, the audit and the training monitor use it too): the
queries are appended to the training features and grouped together, so a query's neighbours are
training samples only. Ties go to the lower training index, as a stable sort gives them.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from medfm.features.neighbours import knn_search
from medfm.heads.common import choose_on_val, has_two_classes, middle, unit_rows
from medfm.metrics.scores import auc


def reference_neighbours(
    reference: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar ``reference`` rows of each query row.

    Returns ``(indices into reference, similarities)``, each ``(len(queries), k)``, in decreasing
    similarity; ``k`` is capped at ``len(reference)``.
    """
    n_ref, n_q = len(reference), len(queries)
    k = min(int(k), n_ref)
    if n_q == 0:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    stacked = np.concatenate([reference, queries]).astype(np.float32, copy=False)
    # every reference row its own group, all queries one group: no query is another's neighbour
    groups = np.r_[np.arange(n_ref), np.full(n_q, n_ref)]
    return knn_search(stacked, k, groups, queries=np.arange(n_ref, n_ref + n_q))


class KNNHead(ClassifierMixin, BaseEstimator):
    """k nearest neighbours by cosine similarity with temperature-weighted votes.

    Votes weigh ``exp(sim / T)`` (Wu et al., "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination", CVPR 2018; the kNN evaluation of DINO, Caron et al. 2021); ``k`` is
    chosen by validation AUC (the middle of ``ks`` without a usable validation split). With
    ``center`` (default) features are first centred on the training mean ("CL2N", SimpleShot,
    Wang et al. 2019): ViT features share a large common component that otherwise dominates
    every cosine similarity.

    Learned: ``train_`` (unit-length centred training features), ``mean_``, ``classes_``,
    ``y_index_`` (training labels as class indices), ``k_``.
    """

    def __init__(
        self, ks: tuple[int, ...] = (5, 10, 20), temperature: float = 0.07, center: bool = True
    ) -> None:
        self.ks = ks
        self.temperature = temperature
        self.center = center

    def _neighbours(self, X, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = unit_rows(np.asarray(X, dtype=np.float32) - self.mean_)
        return reference_neighbours(self.train_, queries, k)

    def _votes(self, idx: np.ndarray, sims: np.ndarray, k: int) -> np.ndarray:
        """Class probabilities from the first ``k`` neighbours (a prefix of a larger search)."""
        idx, sims = idx[:, :k], sims[:, :k].astype(np.float64)
        weights = np.exp(sims / self.temperature)
        votes = np.zeros((len(idx), len(self.classes_)))
        for c in range(len(self.classes_)):
            votes[:, c] = (weights * (self.y_index_[idx] == c)).sum(1)
        return votes / votes.sum(1, keepdims=True)

    def fit(self, X, y, X_val=None, y_val=None) -> KNNHead:
        """Store the centred training features; choose ``k`` on ``(X_val, y_val)`` when given."""
        X = np.asarray(X, dtype=np.float32)
        self.mean_ = X.mean(0) if self.center else np.zeros(X.shape[1], dtype=np.float32)
        self.train_ = unit_rows(X - self.mean_)
        self.classes_, self.y_index_ = np.unique(np.asarray(y), return_inverse=True)
        ks = list(self.ks)
        if X_val is not None and has_two_classes(y_val):
            idx, sims = self._neighbours(X_val, max(ks))  # one search; smaller k are prefixes
            self.k_ = choose_on_val(
                ks, lambda k: auc(y_val, self._votes(idx, sims, k), self.classes_)
            )
        else:
            self.k_ = middle(ks)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """``(n, n_classes)`` normalised votes of the ``k_`` nearest training samples."""
        idx, sims = self._neighbours(X, self.k_)
        return self._votes(idx, sims, self.k_)

    def predict(self, X) -> np.ndarray:
        """The class with the most vote weight, in the original label space."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
