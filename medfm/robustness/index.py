"""The robustness index: does an encoder's neighbourhood follow the biology or the medical center?

Two published definitions, both from the k nearest neighbours of every sample (cosine similarity of
L2-normalised embeddings; the sample itself and samples sharing its ``groups`` value, e.g. the same
patient, are excluded; ties are broken by the lower index, so results do not depend on chance):

* ``"ratio"`` (de Jong et al. 2025, "Current Pathology Foundation Models are unrobust to Medical
  Center Differences"): sum over samples of #neighbours with the same biological class, divided by
  the sum of #neighbours from the same center. Above 1, biology dominates.
* ``"normalized"`` (PathoROB, Kömen et al. 2025): SO / (SO + OS), pooled over samples,
  where SO counts neighbours of the Same class from the Other center and OS neighbours of the
  Other class from the Same center. 0.5 is neutral, 1 fully robust.
"""

from __future__ import annotations

import numpy as np

from medfm.features.neighbours import knn_search


def nearest_neighbours(
    embeddings: np.ndarray,
    k: int,
    groups: np.ndarray | None = None,
    chunk: int = 2048,
    *,
    backend: str = "auto",
) -> np.ndarray:
    """``(n, k)`` indices of each sample's k most cosine-similar others, excluding its group.

    Exact search in row chunks, so memory is ``O(chunk * n)`` (see
    :mod:`medfm.features.neighbours`). Ties go
    to the lower index, so the result does not depend on the hardware, the chunk size, the
    backend or the order of ties. ``backend`` is ``"auto"`` (faiss when installed, else torch),
    ``"torch"`` or ``"faiss"``; both return the same neighbours.

    Raises:
        ValueError: for NaN/Inf embeddings, ``k >= n``, or ``k`` above the number of samples
            outside some sample's group.
    """
    return knn_search(embeddings, k, groups, chunk=chunk, backend=backend)[0]


def neighbour_counts(neighbours: np.ndarray, bio: np.ndarray, center: np.ndarray) -> dict[str, int]:
    """Counts over all (sample, neighbour) pairs: same bio / same center, and SS, SO, OS, OO."""
    bio, center = np.asarray(bio), np.asarray(center)
    same_bio = bio[neighbours] == bio[:, None]
    same_center = center[neighbours] == center[:, None]
    return {
        "same_bio": int(same_bio.sum()),
        "same_center": int(same_center.sum()),
        "SS": int((same_bio & same_center).sum()),
        "SO": int((same_bio & ~same_center).sum()),
        "OS": int((~same_bio & same_center).sum()),
        "OO": int((~same_bio & ~same_center).sum()),
    }


def robustness_index(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    *,
    k: int = 10,
    variant: str = "ratio",
    groups: np.ndarray | None = None,
) -> float:
    """Robustness index of ``embeddings`` ``(n, d)`` given class ``bio`` and ``center`` ``(n,)``.

    Returns ``inf`` for ``"ratio"`` when no neighbour shares a center, and ``nan`` for
    ``"normalized"`` when SO + OS is 0.

    Example:
        >>> emb = np.array([[1, 0], [1, .1], [0, 1], [.1, 1]])
        >>> robustness_index(emb, bio=[0, 0, 1, 1], center=[0, 1, 0, 1], k=1)
        inf

    Raises:
        ValueError: for an unknown ``variant``; ``embeddings``, ``bio``, ``center`` of different
            lengths; a single center or a single class (the index is then meaningless); NaN/Inf
            embeddings; ``k >= n`` or ``k`` above the samples outside some sample's group.
    """
    _check_variant(variant)
    bio, center = _check_labels(embeddings, bio, center)
    counts = neighbour_counts(nearest_neighbours(embeddings, k, groups), bio, center)
    return index_from_counts(counts, variant)


def index_from_counts(counts: dict[str, int], variant: str = "ratio") -> float:
    """The robustness index from :func:`neighbour_counts` (``inf`` / ``nan`` when undefined)."""
    if variant == "ratio":
        return counts["same_bio"] / counts["same_center"] if counts["same_center"] else float("inf")
    if variant == "normalized":
        denom = counts["SO"] + counts["OS"]
        return counts["SO"] / denom if denom else float("nan")
    raise ValueError(f"variant={variant!r}: use 'ratio' or 'normalized'")


def _check_variant(variant: str) -> None:
    if variant not in ("ratio", "normalized"):
        raise ValueError(f"variant={variant!r}: use 'ratio' or 'normalized'")


def _check_labels(
    embeddings, bio, center=None, *, bio_name: str = "bio"
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
            only = values[0].item() if isinstance(values[0], np.generic) else values[0]
            raise ValueError(
                f"{name} has a single value ({only!r} for all {n} samples); the "
                f"robustness analyses compare neighbours across {what} and need at least two"
            )
    return bio, center


_AUDIT_NAMES = (
    "select_k",
    "ri_curve",
    "bootstrap_ci",
    "center_vs_bio",
    "error_attribution",
    "pair_breakdown",
    "performance_drop",
    "leave_one_center_out",
)


def __getattr__(name: str):
    """The audit analyses (:mod:`medfm.robustness.analyses`) are reachable from here too, lazily,
    since
    ``audit`` itself builds on this module."""
    if name in _AUDIT_NAMES:
        from medfm.robustness import analyses as audit

        return getattr(audit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
