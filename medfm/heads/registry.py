"""Downstream heads on feature arrays, with the scikit-learn estimator API.

Both heads take an optional validation split in ``fit`` and then choose their hyper-parameter
(``C`` or ``k``) by validation AUC; without one they use the middle of the grid.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medfm.metrics.scores import auc


def _choose(grid, fit_score) -> object:
    scores = [fit_score(v) for v in grid]
    return grid[int(np.argmax(scores))]


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Logistic regression on standardised features; ``C`` chosen on the validation split."""

    def __init__(
        self, Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), max_iter: int = 2000
    ) -> None:
        self.Cs = Cs
        self.max_iter = max_iter

    def _model(self, C: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=self.max_iter))

    def fit(self, X, y, X_val=None, y_val=None) -> LinearProbe:
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        if X_val is not None and len(np.unique(y_val)) > 1:
            self.C_ = _choose(
                list(self.Cs),
                lambda c: auc(y_val, self._model(c).fit(X, y).predict_proba(X_val), np.unique(y)),
            )
        else:
            self.C_ = list(self.Cs)[len(self.Cs) // 2]
        self.model_ = self._model(self.C_).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.model_.predict_proba(np.asarray(X, dtype=np.float64))

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _l2(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


class KNNHead(ClassifierMixin, BaseEstimator):
    """k nearest neighbours by cosine similarity with temperature-weighted votes
    (weights ``exp(sim / T)``, as in Wu et al. 2018 and DINO's kNN evaluation); ``k`` chosen on
    validation. With ``center`` (default) features are first centred on the training mean
    ("CL2N", SimpleShot, Wang et al. 2019): ViT features share a large common component that
    otherwise dominates every cosine similarity."""

    def __init__(
        self, ks: tuple[int, ...] = (5, 10, 20), temperature: float = 0.07, center: bool = True
    ) -> None:
        self.ks = ks
        self.temperature = temperature
        self.center = center

    def _proba(self, X, k: int) -> np.ndarray:
        sims = _l2(np.asarray(X, dtype=np.float32) - self.mean_) @ self.train_.T  # (n, n_train)
        k = min(k, sims.shape[1])
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        weights = np.exp(np.take_along_axis(sims, top, 1) / self.temperature)
        votes = np.zeros((len(sims), len(self.classes_)))
        for c in range(len(self.classes_)):
            votes[:, c] = (weights * (self.y_index_[top] == c)).sum(1)
        return votes / votes.sum(1, keepdims=True)

    def fit(self, X, y, X_val=None, y_val=None) -> KNNHead:
        X = np.asarray(X, dtype=np.float32)
        self.mean_ = X.mean(0) if self.center else np.zeros(X.shape[1], dtype=np.float32)
        self.train_ = _l2(X - self.mean_)
        self.classes_, self.y_index_ = np.unique(np.asarray(y), return_inverse=True)
        if X_val is not None and len(np.unique(y_val)) > 1:
            self.k_ = _choose(
                list(self.ks), lambda k: auc(y_val, self._proba(X_val, k), self.classes_)
            )
        else:
            self.k_ = list(self.ks)[len(self.ks) // 2]
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self._proba(X, self.k_)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


HEADS = {"linear": LinearProbe, "knn": KNNHead}

# GDA, prototype and MLP heads live in heads_extra.py (which imports nothing from here); they are
# registered here so that HEADS names every head.
from medfm.heads.extra import GDAHead, MLPHead, PrototypeHead  # noqa: E402

HEADS.update({"gda": GDAHead, "prototype": PrototypeHead, "mlp": MLPHead})


def build_head(name: str, eval_cfg, seed: int = 0):
    """A fresh head named in ``eval.heads``: the linear probe's C grid and kNN's k grid come from
    ``eval_cfg``; the MLP's initialisation follows ``seed``."""
    if name not in HEADS:
        raise ValueError(f"eval.heads: unknown head {name!r}; available: {sorted(HEADS)}")
    if name == "linear":
        return LinearProbe(Cs=tuple(eval_cfg.linear_c_grid))
    if name == "knn":
        return KNNHead(ks=tuple(eval_cfg.knn_k_grid))
    if name == "mlp":
        return HEADS["mlp"](random_state=seed)
    return HEADS[name]()
