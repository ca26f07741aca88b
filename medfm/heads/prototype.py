"""Nearest class prototype by cosine similarity, with TEEN calibration of novel classes (Wang et
al., "Few-Shot Class-Incremental Learning via Training-Free Prototype Calibration", NeurIPS 2023).

Same scikit-learn API as every head; inputs are checked with scikit-learn's ``validate_data``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from medfm.heads.common import unit_rows


def _class_prototypes(X: np.ndarray, y_index: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, d)`` unit-length class means."""
    return unit_rows(np.stack([X[y_index == c].mean(0) for c in range(n_classes)]))


def teen_calibrate(
    prototypes: np.ndarray, novel: np.ndarray, alpha: float, tau: float
) -> np.ndarray:
    """TEEN's training-free calibration of novel-class prototypes (Wang et al., NeurIPS 2023).

    For each novel prototype ``p_n``: ``p'_n = alpha p_n + (1 - alpha) sum_b w_nb p_b`` with
    ``w_n = softmax_b(tau cos(p_n, p_b))`` over the base prototypes ``p_b``, the paper's formula.
    Base prototypes are returned unchanged. The authors' code (github.com/wangkiw/TEEN,
    ``soft_calibration``) L2-normalises the shift ``sum_b w_nb p_b`` before mixing and names
    ``1 - alpha`` ``shift_weight`` (0.1 on CIFAR-100, ``softmax_t`` = tau = 16); here the shift
    is mixed as it is, so at equal ``alpha`` it pulls a little less than theirs.

    Args:
        prototypes: ``(n_classes, d)`` unit-length prototypes.
        novel: ``(n_classes,)`` bool, True for novel classes; at least one must be False.
    Returns:
        ``(n_classes, d)`` calibrated prototypes (not renormalised).
    """
    base = prototypes[~novel]
    weights = softmax(tau * (prototypes[novel] @ base.T), axis=1)  # (n_novel, n_base)
    out = prototypes.copy()
    out[novel] = alpha * prototypes[novel] + (1 - alpha) * weights @ base
    return out


class PrototypeHead(ClassifierMixin, BaseEstimator):
    """Nearest class prototype by cosine similarity, with TEEN calibration of novel classes.

    Prototypes are the L2-normalised class means; ``predict_proba`` is
    ``softmax(cos(x, p_c) / temperature)``. Classes absent from ``base_classes`` are novel
    (few-shot) and their prototypes are moved toward similar base prototypes with
    ``teen_calibrate``, following "Few-Shot Class-Incremental Learning via Training-Free
    Prototype Calibration" (Wang et al., NeurIPS 2023), then renormalised.

    With ``center`` (default) features are centred on the training mean before normalising
    ("CL2N", SimpleShot, Wang et al. 2019), which matters for ViT features with a large shared
    component.

    Args:
        temperature: softmax temperature on cosine similarities.
        alpha: weight of a novel prototype's own mean (1 turns calibration off).
        tau: sharpness of the weights over base prototypes.

    Learned: ``prototypes_`` ``(n_classes, d)`` unit-length (calibrated) prototypes,
    ``is_novel_`` ``(n_classes,)`` bool, ``classes_``, ``n_features_in_``.

    Example:
        >>> head = PrototypeHead().fit(X, y, base_classes=["normal", "tumour"])  # doctest: +SKIP
    """

    def __init__(
        self, temperature: float = 0.1, alpha: float = 0.5, tau: float = 16.0, center: bool = True
    ) -> None:
        self.temperature = temperature
        self.alpha = alpha
        self.tau = tau
        self.center = center

    def fit(self, X, y, X_val=None, y_val=None, *, base_classes=None) -> PrototypeHead:
        """Fit the prototypes; ``base_classes=None`` treats every class as base (no calibration).

        ``X_val`` and ``y_val`` are accepted so every head is called alike, and are unused: the
        head has nothing to choose (the temperature does not change which class ranks first).
        """
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        self.is_novel_ = self._novel_mask(base_classes)
        self.mean_ = X.mean(0) if self.center else np.zeros(X.shape[1])
        prototypes = _class_prototypes(X - self.mean_, y_index, len(self.classes_))
        if self.is_novel_.any():
            prototypes = unit_rows(teen_calibrate(prototypes, self.is_novel_, self.alpha, self.tau))
        self.prototypes_ = prototypes
        return self

    def _novel_mask(self, base_classes) -> np.ndarray:
        if base_classes is None:
            return np.zeros(len(self.classes_), dtype=bool)
        base = np.asarray(list(base_classes))
        unknown = base[~np.isin(base, self.classes_)]
        if len(unknown):
            raise ValueError(
                f"PrototypeHead.fit: base_classes {unknown.tolist()} have no training samples; "
                f"the labels in y are {self.classes_.tolist()}"
            )
        if len(base) == 0:
            raise ValueError(
                "PrototypeHead.fit: base_classes is empty; TEEN calibrates novel classes "
                "against base classes, so name at least one (or pass None for no calibration)"
            )
        return ~np.isin(self.classes_, base)

    def predict_proba(self, X) -> np.ndarray:
        """``softmax(cos(x, p_c) / temperature)`` over the (calibrated) prototypes."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return softmax(unit_rows(X - self.mean_) @ self.prototypes_.T / self.temperature, axis=1)

    def predict(self, X) -> np.ndarray:
        """The class of the most similar prototype, in the original label space."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
