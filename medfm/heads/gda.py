"""Training-free Gaussian discriminant analysis with one shared, shrunk covariance (Wang et al.,
"A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024).

Same scikit-learn API as every head: ``fit(X, y, X_val=None, y_val=None)``; inputs are checked
with scikit-learn's ``validate_data``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from medfm.heads.common import has_two_classes
from medfm.metrics.scores import auc


def _pooled_shrinkage(X: np.ndarray, y_index: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage of the pooled within-class covariance toward ``tr(S) / d * I``.

    Ledoit-Wolf runs once on the residuals ``x - mu_y`` of all classes together, so few-shot
    classes share one estimate.
    """
    means = np.stack([X[y_index == c].mean(0) for c in range(y_index.max() + 1)])
    return float(ledoit_wolf_shrinkage(X - means[y_index], assume_centered=True))


def _gda(shrinkage: float) -> LinearDiscriminantAnalysis:
    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage)


class _IsotropicGDA:
    """GDA with ``Sigma = I`` (full shrinkage of an unknown scale): softmax of
    ``x^T mu_c - |mu_c|^2 / 2 + log pi_c``. Used when every class has a single sample, where
    scikit-learn's LDA refuses to fit and the pooled covariance is zero."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> _IsotropicGDA:
        """Class means and log priors."""
        self.classes_, index = np.unique(y, return_inverse=True)
        self.means_ = np.stack([X[index == c].mean(0) for c in range(len(self.classes_))])
        self.log_prior_ = np.log(np.bincount(index) / len(index))
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax of the isotropic discriminant logits."""
        logits = X @ self.means_.T - 0.5 * (self.means_**2).sum(1) + self.log_prior_
        return softmax(logits, axis=1)


class GDAHead(ClassifierMixin, BaseEstimator):
    """Training-free Gaussian discriminant analysis with one shared, shrunk covariance.

    Follows Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation",
    ICLR 2024: class means ``mu_c``, pooled within-class covariance ``S``, shrunk to
    ``Sigma = (1 - a) S + a tr(S) / d I``; logits ``x^T Sigma^-1 mu_c + b_c`` with
    ``b_c = log pi_c - 1/2 mu_c^T Sigma^-1 mu_c`` (``pi_c`` the training class frequencies);
    probabilities are their softmax.

    That linear model is scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr",
    shrinkage=a)`` for a float ``a`` (it shrinks each class covariance by ``a`` and averages them
    by ``pi_c``, which is the same as shrinking ``S``), so this head wraps it and only chooses
    ``a``. It is not LDA alone because LDA's ``shrinkage="auto"`` standardises the features and
    runs Ledoit-Wolf per class, shrinking toward the diagonal of the variances rather than toward
    a scaled identity, and because LDA has no validation split to choose ``a`` on.

    Args:
        shrinkage: ``"auto"``: with a validation split of two or more classes, the value in
            ``shrinkages`` with the best validation AUC; without one, Ledoit-Wolf's estimate on
            the pooled within-class residuals. A float in ``[0, 1]``: that value.
        shrinkages: the grid searched on validation.

    Learned: ``shrinkage_`` (the ``a`` used), ``model_`` (the fitted LDA; its ``coef_`` and
    ``intercept_`` are ``Sigma^-1 mu_c`` and ``b_c``, collapsed to one row for two classes),
    ``classes_``, ``n_features_in_``.

    Example:
        >>> head = GDAHead().fit(X_train, y_train, X_val, y_val)  # doctest: +SKIP
        >>> head.predict_proba(X_test).shape  # (n_test, n_classes)  # doctest: +SKIP
    """

    def __init__(
        self,
        shrinkage: float | str = "auto",
        shrinkages: tuple[float, ...] = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 0.9),
    ) -> None:
        self.shrinkage = shrinkage
        self.shrinkages = shrinkages

    def _choose_shrinkage(self, X, y, X_val, y_val) -> float:
        if self.shrinkage != "auto":
            if isinstance(self.shrinkage, str) or not 0.0 <= self.shrinkage <= 1.0:
                raise ValueError(
                    f"GDAHead: shrinkage must be 'auto' or a float in [0, 1], "
                    f"got {self.shrinkage!r}"
                )
            return float(self.shrinkage)
        if not has_two_classes(y_val):
            return _pooled_shrinkage(X, np.unique(y, return_inverse=True)[1])
        X_val = validate_data(self, X_val, reset=False)
        grid = [float(a) for a in self.shrinkages]
        scores = [auc(y_val, _gda(a).fit(X, y).predict_proba(X_val), np.unique(y)) for a in grid]
        return grid[int(np.argmax(scores))]

    def fit(self, X, y, X_val=None, y_val=None) -> GDAHead:
        """Fit class means and the shared covariance; choose the shrinkage on validation."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        if len(np.unique(y)) < 2:
            raise ValueError("GDAHead.fit: y has only one class; GDA needs two or more classes")
        if len(X) <= len(np.unique(y)):  # one shot per class: no within-class scatter at all
            self.shrinkage_, self.model_ = 1.0, _IsotropicGDA().fit(X, y)
        else:
            self.shrinkage_ = self._choose_shrinkage(X, y, X_val, y_val)
            self.model_ = _gda(self.shrinkage_).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        """``(n, n_classes)`` softmax of the discriminant logits, columns in ``classes_`` order."""
        check_is_fitted(self)
        return self.model_.predict_proba(validate_data(self, X, reset=False, dtype=np.float64))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, in the original label space."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
