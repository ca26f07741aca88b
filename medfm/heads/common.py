"""Small helpers shared by the feature heads: the validation check, row normalisation and the
grid search on validation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

V = TypeVar("V")


def has_two_classes(y_val) -> bool:
    """True when a validation split is given and holds two or more classes (AUC is defined)."""
    return y_val is not None and len(np.unique(np.asarray(y_val))) > 1


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def choose_on_val(grid: Sequence[V], score: Callable[[V], float]) -> V:
    """The grid value with the highest ``score`` (the first one on ties)."""
    scores = [score(v) for v in grid]
    return grid[int(np.argmax(scores))]


def middle(grid: Sequence[V]) -> V:
    """The middle of the grid: the choice without a usable validation split."""
    return list(grid)[len(grid) // 2]
