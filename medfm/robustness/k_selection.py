"""Choosing k: leave-one-out kNN balanced accuracy, the operating k, and the RI-vs-k curve.

The robustness index depends on the number of neighbours k (de Jong et al. 2025, "Current
Pathology Foundation Models are unrobust to Medical Center Differences"; PathoROB, Kömen et al.
2025). Neighbours are the exact cosine k nearest of :func:`medfm.features.neighbours.knn_search`
(the sample itself and its group excluded, ties to the lower index); each function searches once,
for the largest k it needs, and reads smaller k as prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from medfm.features.neighbours import knn_search
from medfm.robustness.checks import VARIANTS, check_groups, check_ks, check_labels, check_variant
from medfm.robustness.index import index_from_counts, neighbour_counts

DEFAULT_KS = (5, 10, 20, 50)


def vote_balanced_accuracy(
    neighbours: np.ndarray, labels: np.ndarray, ks: Sequence[int]
) -> dict[int, float]:
    """Leave-one-out majority vote of the first k columns of ``neighbours`` ``(n, >= max(ks))``,
    balanced accuracy of ``labels`` per k in increasing ``ks``.

    Ties between classes go to the class that sorts first (as scikit-learn's kNN does)."""
    classes, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    votes = np.zeros((len(labels), len(classes)), dtype=np.int32)
    rows = np.arange(len(labels))
    out, done = {}, 0
    for k in ks:
        for col in range(done, k):
            votes[rows, codes[neighbours[:, col]]] += 1
        done = k
        out[k] = float(balanced_accuracy_score(codes, votes.argmax(1)))
    return out


def select_k(
    embeddings: np.ndarray,
    bio: np.ndarray,
    grid: Sequence[int] = DEFAULT_KS,
    groups: np.ndarray | None = None,
    *,
    backend: str = "auto",
) -> int:
    """The k of ``grid`` with the highest biological kNN balanced accuracy.

    The robustness index depends on k (de Jong et al. 2025; PathoROB); this reads it at the
    neighbourhood size where the embedding best predicts the biology, the operating-k rule of
    croma's implementation of the PathoROB index: every sample is predicted by the majority vote
    of its k nearest neighbours (:func:`vote_balanced_accuracy`, the kNN evaluation de Jong et al.
    2025 use). Ties go to the smallest k.

    Example:
        >>> k = select_k(embeddings, bio, grid=(5, 10, 20, 50), groups=patient)
        >>> robustness_index(embeddings, bio, center, k=k, groups=patient)
    """
    bio, _ = check_labels(embeddings, bio)
    groups = check_groups(groups, len(bio))
    grid = check_ks(grid, len(bio), groups, "grid")
    neighbours = knn_search(embeddings, grid[-1], groups, backend=backend)[0]
    scores = vote_balanced_accuracy(neighbours, bio, grid)
    best = max(scores.values())
    return min(k for k, score in scores.items() if score == best)


def ri_curves(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    groups: np.ndarray | None = None,
    *,
    backend: str = "auto",
) -> dict[str, dict[int, float]]:
    """Both robustness-index variants at every k of ``ks``, from one neighbour search:
    ``{"ratio": {k: RI}, "normalized": {k: RI}}`` (k increasing).

    Equal to :func:`medfm.robustness.index.robustness_index` at each k and variant (``"ratio"``,
    de Jong et al. 2025; ``"normalized"``, PathoROB, Kömen et al. 2025).
    """
    bio, center = check_labels(embeddings, bio, center)
    groups = check_groups(groups, len(bio))
    ks = check_ks(ks, len(bio), groups, "ks")
    neighbours = knn_search(embeddings, ks[-1], groups, backend=backend)[0]
    counts = {k: neighbour_counts(neighbours[:, :k], bio, center) for k in ks}
    return {variant: {k: index_from_counts(counts[k], variant) for k in ks} for variant in VARIANTS}


def ri_curve(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    variant: str = "ratio",
    groups: np.ndarray | None = None,
    *,
    backend: str = "auto",
) -> dict[int, float]:
    """The robustness index at every k of ``ks`` (``{k: RI}``, k increasing), from one search:
    one variant of :func:`ri_curves` (``"ratio"``, de Jong et al. 2025, or ``"normalized"``,
    PathoROB, Kömen et al. 2025)."""
    check_variant(variant)
    return ri_curves(embeddings, bio, center, ks, groups, backend=backend)[variant]
