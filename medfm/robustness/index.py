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

Both come from one neighbour counter (:func:`neighbour_counts`) and one formula
(:func:`index_from_counts`), which also serve the bootstrap CI (:func:`bootstrap_ci`), the RI-vs-k
curve (:mod:`medfm.robustness.k_selection`) and the chance level (:func:`chance_level`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medfm.features.neighbours import knn_search
from medfm.metrics.bootstrap import check_bootstrap_args, grouped_bootstrap, resampling_units
from medfm.robustness.checks import check_groups, check_labels, check_variant

COUNT_KEYS = ("same_bio", "same_center", "SS", "SO", "OS", "OO")


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
    :mod:`medfm.features.neighbours`). Ties go to the lower index, so the result does not depend
    on the hardware, the chunk size, the backend or the order of ties. ``backend`` is ``"auto"``
    (faiss when installed, else torch), ``"torch"`` or ``"faiss"``; both return the same
    neighbours.

    Raises:
        ValueError: for NaN/Inf embeddings, ``k >= n``, or ``k`` above the number of samples
            outside some sample's group.
    """
    return knn_search(embeddings, k, groups, chunk=chunk, backend=backend)[0]


def neighbour_counts(
    neighbours: np.ndarray, bio: np.ndarray, center: np.ndarray, *, per_sample: bool = False
) -> dict:
    """Counts over (sample, neighbour) pairs: same bio, same center, and SS, SO, OS, OO (Same or
    Other class, then Same or Other center).

    Totals over all pairs as ``int`` by default; with ``per_sample=True`` each key maps to the
    ``(n,)`` int64 counts of each anchor's own neighbours instead (what the bootstrap reweights).
    """
    bio, center = np.asarray(bio), np.asarray(center)
    same_bio = bio[neighbours] == bio[:, None]
    same_center = center[neighbours] == center[:, None]
    pairs = {
        "same_bio": same_bio,
        "same_center": same_center,
        "SS": same_bio & same_center,
        "SO": same_bio & ~same_center,
        "OS": ~same_bio & same_center,
        "OO": ~same_bio & ~same_center,
    }
    if per_sample:
        return {key: mask.sum(1, dtype=np.int64) for key, mask in pairs.items()}
    return {key: int(mask.sum()) for key, mask in pairs.items()}


def index_from_counts(counts: Mapping[str, float], variant: str = "ratio") -> float:
    """The robustness index from :func:`neighbour_counts` totals (``inf`` for ``"ratio"`` without
    same-center neighbours, ``nan`` for ``"normalized"`` when SO + OS is 0)."""
    check_variant(variant)
    if variant == "ratio":
        same_center = counts["same_center"]
        return float(counts["same_bio"] / same_center) if same_center else float("inf")
    denom = counts["SO"] + counts["OS"]
    return float(counts["SO"] / denom) if denom else float("nan")


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
    check_variant(variant)
    bio, center = check_labels(embeddings, bio, center)
    counts = neighbour_counts(nearest_neighbours(embeddings, k, groups), bio, center)
    return index_from_counts(counts, variant)


def bootstrap_ci(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    k: int = 10,
    variant: str = "ratio",
    groups: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    backend: str = "auto",
) -> tuple[float, float]:
    """``(lo, hi)`` percentile bootstrap confidence interval (95 % by default) of the robustness
    index (``variant`` ``"ratio"``, de Jong et al. 2025, or ``"normalized"``, PathoROB), by the
    one grouped bootstrap (:func:`medfm.metrics.bootstrap.grouped_bootstrap`).

    The neighbours are computed ONCE, on all samples. Each of the ``n_boot`` replicates then
    resamples the anchors: it draws units with replacement -- whole ``groups`` (patients) when
    given, else single samples -- and counts each anchor's k neighbours as many times as its unit
    was drawn. The neighbourhoods themselves are not recomputed on the resampled set, so the
    interval reflects which samples (patients) were audited, not how a smaller or duplicated set
    would re-arrange the neighbours; this keeps 200 replicates cheap at 1M samples.

    Replicates where the index is undefined (``nan``) are dropped; when some are infinite the
    quantiles are taken without interpolation (``method="inverted_cdf"``).
    """
    check_variant(variant)
    bio, center = check_labels(embeddings, bio, center)
    groups = check_groups(groups, len(bio))
    check_bootstrap_args(n_boot, alpha)
    neighbours = knn_search(embeddings, k, groups, backend=backend)[0]
    units = resampling_units(len(bio), groups)
    per_anchor = neighbour_counts(neighbours, bio, center, per_sample=True)
    n_units = int(units.max()) + 1
    per_unit = np.stack([np.bincount(units, per_anchor[key], n_units) for key in COUNT_KEYS], 1)

    def statistic(unit_counts: np.ndarray) -> np.ndarray:
        totals = unit_counts @ per_unit  # (B, 6) pooled counts of each replicate
        return np.array(
            [index_from_counts(dict(zip(COUNT_KEYS, row, strict=True)), variant) for row in totals]
        )

    return grouped_bootstrap(statistic, units, n_boot=n_boot, alpha=alpha, seed=seed)


def chance_level(bio: np.ndarray, center: np.ndarray) -> dict[str, float]:
    """Both indices when the neighbours are drawn at random (every other sample equally likely):
    the class balance and the center sizes alone set them, so an encoder at or below this level
    has not organised its embedding by biology (de Jong et al. 2025; PathoROB).

    Returns ``{"robustness_index", "robustness_index_normalized", "n"}``.
    """
    bio, center = np.asarray(bio), np.asarray(center)
    _, b_idx, b_n = np.unique(bio, return_inverse=True, return_counts=True)
    _, c_idx, c_n = np.unique(center, return_inverse=True, return_counts=True)
    b_idx, c_idx = b_idx.reshape(-1), c_idx.reshape(-1)
    pair = np.zeros((len(b_n), len(c_n)))
    np.add.at(pair, (b_idx, c_idx), 1)
    same_bio, same_center = (b_n[b_idx] - 1).sum(), (c_n[c_idx] - 1).sum()
    ss = (pair[b_idx, c_idx] - 1).sum()
    counts = {"same_bio": same_bio, "same_center": same_center, "SO": same_bio - ss}
    counts["OS"] = same_center - ss
    return {
        "robustness_index": index_from_counts(counts, "ratio"),
        "robustness_index_normalized": index_from_counts(counts, "normalized"),
        "n": len(bio),
    }
