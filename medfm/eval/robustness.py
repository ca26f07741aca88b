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
import torch


def _normalize(x: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_neighbours(
    embeddings: np.ndarray, k: int, groups: np.ndarray | None = None, chunk: int = 2048
) -> np.ndarray:
    """``(n, k)`` indices of each sample's k most cosine-similar others, excluding its group.

    Computed in row chunks so memory is ``O(chunk * n)``. Ties go to the lower index (a stable sort
    of the similarities), so the result does not depend on the hardware or the order of ties.
    """
    x = _normalize(embeddings)
    n = len(x)
    if k >= n:
        raise ValueError(f"k={k} must be smaller than the number of samples ({n})")
    group_ids = (
        None
        if groups is None
        else torch.as_tensor(np.unique(np.asarray(groups), return_inverse=True)[1])
    )
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        sims = x[rows] @ x.T  # (chunk, n)
        sims[torch.arange(len(rows)), rows] = -torch.inf
        if group_ids is not None:
            sims[group_ids[rows, None] == group_ids[None, :]] = -torch.inf
        top = torch.sort(sims, dim=1, descending=True, stable=True)
        if torch.isinf(top.values[:, k - 1]).any():
            raise ValueError(
                f"k={k} exceeds the number of eligible neighbours (samples outside the same "
                "group) for some samples; lower k"
            )
        order = top.indices[:, :k]
        out[start : start + len(rows)] = order.numpy()
    return out


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
    """
    if len(embeddings) != len(bio) or len(bio) != len(center):
        raise ValueError(
            f"embeddings ({len(embeddings)}), bio ({len(bio)}) and center "
            f"({len(center)}) must have the same length"
        )
    counts = neighbour_counts(nearest_neighbours(embeddings, k, groups), bio, center)
    if variant == "ratio":
        return counts["same_bio"] / counts["same_center"] if counts["same_center"] else float("inf")
    if variant == "normalized":
        denom = counts["SO"] + counts["OS"]
        return counts["SO"] / denom if denom else float("nan")
    raise ValueError(f"variant={variant!r}: use 'ratio' or 'normalized'")
