"""A small MLP head on standardised features, early-stopped on validation AUC.

Same scikit-learn API as every head; inputs are checked with scikit-learn's ``validate_data``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from medfm.heads.common import has_two_classes
from medfm.metrics.scores import auc


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
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
        """Train the MLP; with a two-class validation split, early-stop on validation AUC."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        self.scaler_ = StandardScaler().fit(X)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        with torch.random.fork_rng(devices=[]), _torch_threads(self.n_threads):
            torch.manual_seed(seed)
            model = _mlp(X.shape[1], self.hidden_dim, len(self.classes_), self.dropout)
            if has_two_classes(y_val):
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
        """``(n, n_classes)`` softmax of the logits, columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        with _torch_threads(self.n_threads):
            logits = _logits(self.model_, self.scaler_.transform(X))
        return softmax(logits.astype(np.float64), axis=1)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, in the original label space."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
