"""The linear probe: logistic regression on standardised features, ``C`` chosen on validation."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from medfm.heads.common import choose_on_val, has_two_classes, middle
from medfm.metrics.scores import auc


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Logistic regression on standardised features; ``C`` chosen by validation AUC.

    Without a validation split of two or more classes ``C`` is the middle of ``Cs``.

    Learned: ``C_``, ``model_`` (the fitted scaler + logistic-regression pipeline), ``classes_``.
    """

    def __init__(
        self, Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), max_iter: int = 2000
    ) -> None:
        self.Cs = Cs
        self.max_iter = max_iter

    def _model(self, C: float) -> Pipeline:
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=self.max_iter))

    def fit(self, X, y, X_val=None, y_val=None) -> LinearProbe:
        """Fit on ``(X, y)``, choosing ``C`` on ``(X_val, y_val)`` when given."""
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        if X_val is not None and has_two_classes(y_val):
            classes = np.unique(y)
            self.C_ = choose_on_val(
                list(self.Cs),
                lambda c: auc(y_val, self._model(c).fit(X, y).predict_proba(X_val), classes),
            )
        else:
            self.C_ = middle(self.Cs)
        self.model_ = self._model(self.C_).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        """``(n, n_classes)`` class probabilities, columns in ``classes_`` order."""
        return self.model_.predict_proba(np.asarray(X, dtype=np.float64))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, in the original label space."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
