"""More downstream heads on feature arrays: shared-covariance GDA, cosine prototypes with TEEN
calibration, and a small MLP. Same scikit-learn API as ``medfm.heads.registry``.

Every ``fit`` takes ``(X, y, X_val=None, y_val=None)`` so that ``evaluate_heads`` calls all heads
in ``HEADS`` the same way; they are registered there as ``"gda"``, ``"prototype"`` and ``"mlp"``.
Inputs are checked with scikit-learn's ``validate_data`` (finite, 2-D, the same number of features
at predict time as at fit time).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from medfm.metrics.scores import auc


def _has_two_classes(y_val) -> bool:
    return y_val is not None and len(np.unique(np.asarray(y_val))) > 1


def _unit(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------- GDA


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
        self.classes_, index = np.unique(y, return_inverse=True)
        self.means_ = np.stack([X[index == c].mean(0) for c in range(len(self.classes_))])
        self.log_prior_ = np.log(np.bincount(index) / len(index))
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
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
        if not _has_two_classes(y_val):
            return _pooled_shrinkage(X, np.unique(y, return_inverse=True)[1])
        X_val = validate_data(self, X_val, reset=False)
        grid = [float(a) for a in self.shrinkages]
        scores = [auc(y_val, _gda(a).fit(X, y).predict_proba(X_val), np.unique(y)) for a in grid]
        return grid[int(np.argmax(scores))]

    def fit(self, X, y, X_val=None, y_val=None) -> GDAHead:
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
        check_is_fitted(self)
        return self.model_.predict_proba(validate_data(self, X, reset=False, dtype=np.float64))

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


# ------------------------------------------------------------------------------- prototypes


def _class_prototypes(X: np.ndarray, y_index: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, d)`` unit-length class means."""
    return _unit(np.stack([X[y_index == c].mean(0) for c in range(n_classes)]))


def teen_calibrate(
    prototypes: np.ndarray, novel: np.ndarray, alpha: float, tau: float
) -> np.ndarray:
    """TEEN's training-free calibration of novel-class prototypes (Wang et al., NeurIPS 2023).

    For each novel prototype ``p_n``: ``p'_n = alpha p_n + (1 - alpha) sum_b w_nb p_b`` with
    ``w_n = softmax_b(tau cos(p_n, p_b))`` over the base prototypes ``p_b``. Base prototypes are
    returned unchanged.

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
            prototypes = _unit(teen_calibrate(prototypes, self.is_novel_, self.alpha, self.tau))
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
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return softmax(_unit(X - self.mean_) @ self.prototypes_.T / self.temperature, axis=1)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


# -------------------------------------------------------------------------------------- MLP


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run torch with ``n`` intra-op threads, restoring the caller's setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out)
    )


def _train_epoch(model, optimiser, X: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
    model.train()
    for batch in torch.randperm(len(X)).split(batch_size):
        loss = nn.functional.cross_entropy(model(X[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


@torch.no_grad()
def _logits(model, X: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))).numpy()


class MLPHead(ClassifierMixin, BaseEstimator):
    """One-hidden-layer MLP (Linear, ReLU, Dropout, Linear) on standardised features.

    Trained with AdamW and cross-entropy in float32 on CPU. With a validation split of two or
    more classes it keeps the weights of the epoch with the best validation AUC and stops after
    ``patience`` epochs without improvement; without one it trains ``max_epochs`` epochs.
    Weight initialisation, shuffling and dropout draw from torch's RNG seeded by
    ``random_state`` inside ``torch.random.fork_rng`` (the caller's RNG state is restored after),
    so a fit with an int ``random_state`` repeats on the same machine. Torch runs on
    ``n_threads`` threads during ``fit`` and ``predict_proba``: heads this small train fastest on
    one, and a fixed count keeps the summation order from depending on the machine's core
    count.

    Learned: ``scaler_`` (StandardScaler), ``model_`` (the torch module), ``n_epochs_`` (epochs
    behind the kept weights), ``val_auc_`` (their validation AUC, or None), ``classes_``,
    ``n_features_in_``.
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 64,
        max_epochs: int = 100,
        patience: int = 10,
        random_state: int | None = 0,
        n_threads: int = 1,
    ) -> None:
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(self, X, y, X_val=None, y_val=None) -> MLPHead:
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        self.scaler_ = StandardScaler().fit(X)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        with torch.random.fork_rng(devices=[]), _torch_threads(self.n_threads):
            torch.manual_seed(seed)
            model = _mlp(X.shape[1], self.hidden_dim, len(self.classes_), self.dropout)
            if _has_two_classes(y_val):
                X_val = validate_data(self, X_val, reset=False, dtype=np.float32)
                self._fit_early_stopping(model, X, y_index, X_val, np.asarray(y_val))
            else:
                self._fit_fixed(model, X, y_index)
        self.model_ = model.eval()
        return self

    def _start(self, model, X, y_index):
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        X_t = torch.from_numpy(self.scaler_.transform(X).astype(np.float32))
        return optimiser, X_t, torch.from_numpy(y_index.astype(np.int64))

    def _fit_fixed(self, model, X, y_index) -> None:
        optimiser, X_t, y_t = self._start(model, X, y_index)
        for _ in range(self.max_epochs):
            _train_epoch(model, optimiser, X_t, y_t, self.batch_size)
        self.n_epochs_, self.val_auc_ = self.max_epochs, None

    def _fit_early_stopping(self, model, X, y_index, X_val, y_val) -> None:
        optimiser, X_t, y_t = self._start(model, X, y_index)
        X_val = self.scaler_.transform(X_val)
        best_auc, best_epoch, best_state = -np.inf, 0, None
        for epoch in range(1, self.max_epochs + 1):
            _train_epoch(model, optimiser, X_t, y_t, self.batch_size)
            val_auc = auc(y_val, softmax(_logits(model, X_val), axis=1), self.classes_)
            if val_auc > best_auc:
                best_auc, best_epoch = val_auc, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            elif epoch - best_epoch >= self.patience:
                break
        if best_state is not None:  # max_epochs < 1: the untrained weights
            model.load_state_dict(best_state)
        self.n_epochs_, self.val_auc_ = best_epoch, float(best_auc)

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        with _torch_threads(self.n_threads):
            logits = _logits(self.model_, self.scaler_.transform(X))
        return softmax(logits.astype(np.float64), axis=1)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
