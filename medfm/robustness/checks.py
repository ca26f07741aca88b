"""Argument checks shared by the robustness analyses, with messages that say what to pass.

The analyses (de Jong et al. 2025, "Current Pathology Foundation Models are unrobust to Medical
Center Differences"; PathoROB, Kömen et al. 2025) compare a sample's neighbours across classes
and centers, so every one needs one class and one center per embedding row, at least two of
each, and a ``k`` that every sample can reach outside its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medfm.features.neighbours import max_neighbours
from medfm.metrics.classification import per_sample

VARIANTS = ("ratio", "normalized")


def plain(value: Any) -> Any:
    """numpy scalars, arrays and non-``int``/``str`` keys as plain Python (recursively), so the
    value prints and serialises as JSON cleanly."""
    if isinstance(value, dict):
        return {
            k if isinstance(k, int | str) else str(plain(k)): plain(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_variant(variant: str) -> None:
    """Refuse a robustness-index variant other than ``"ratio"`` and ``"normalized"``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: use 'ratio' or 'normalized'")


def check_labels(
    embeddings: Any, bio: Any, center: Any = None, *, bio_name: str = "bio"
) -> tuple[np.ndarray, np.ndarray | None]:
    """``bio`` (and ``center``) as 1-D arrays, one per row of ``embeddings``, each with at least
    two distinct values: the index compares same- with other-class and -center neighbours."""
    n = len(embeddings)
    bio = np.asarray(bio)
    center = None if center is None else np.asarray(center)
    lengths = {"embeddings": n, bio_name: len(bio)}
    if center is not None:
        lengths["center"] = len(center)
    if len(set(lengths.values())) > 1 or bio.ndim != 1 or (center is not None and center.ndim != 1):
        names = ", ".join(f"{name} ({size})" for name, size in lengths.items())
        raise ValueError(f"{names} must have the same length; pass one 1-D label per embedding row")
    checks = ((bio_name, bio, "classes"), ("center", center, "centers"))
    for name, values, what in checks:
        if values is not None and len(np.unique(values)) < 2:
            if not len(values):
                raise ValueError(f"{name} is empty; pass the labels of at least two samples")
            raise ValueError(
                f"{name} has a single value ({plain(values[0])!r} for all {n} samples); the "
                f"robustness analyses compare neighbours across {what} and need at least two"
            )
    return bio, center


def check_groups(groups: Any, n: int) -> np.ndarray | None:
    """``groups`` as a 1-D array of ``n`` labels (``None`` stays ``None``)."""
    return per_sample(groups, n, "groups", against="embeddings")


def check_ks(ks: Sequence[int] | int, n: int, groups: np.ndarray | None, name: str) -> list[int]:
    """Sorted distinct ``ks``, each a positive integer that every sample can reach."""
    given = np.atleast_1d(np.asarray(ks)) if np.size(ks) else np.zeros(0)
    values = sorted({int(k) for k in given})
    if not values or values[0] < 1 or not all(float(k) == int(k) for k in given):
        raise ValueError(f"{name}={ks!r} must hold at least one positive integer k")
    limit = max_neighbours(n, groups)
    if values[-1] > limit:
        raise ValueError(
            f"{name}={tuple(np.atleast_1d(ks).tolist())!r} asks for k={values[-1]}, but some "
            f"samples have only {limit} eligible neighbours (samples outside their group); drop "
            f"the larger values from {name}"
        )
    return values
