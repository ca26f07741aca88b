"""Volume-scope reduction rules: which of one volume's slices (in slice order) to keep.

Wolf et al. 2024 ("Less is More: Selective Reduction of CT Data for Self-Supervised Pre-Training
of Deep Learning Models with Contrastive Learning Improves Downstream Classification
Performance", Computers in Biology and Medicine 183:109242) reduce each CT volume before
contrastive pre-training, so that near-identical neighbouring slices stop filling the batch as
each other's negatives. They compared dHash (kept, "Hash-6"), SSIM, mutual information, deep
embedding similarity and keeping every n-th slice. Each rule here returns the kept positions,
sorted; each raises ValueError for a threshold out of its range.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np

from medfm.curation.hashing import hamming
from medfm.curation.similarity import cosine, normalized_mi, ssim

HASH_BITS = 64
# The range of each similarity of medfm.curation.similarity; another callable gets [-1, 1].
SIMILARITY_RANGES: dict[Callable, tuple[float, float]] = {
    ssim: (-1.0, 1.0),
    normalized_mi: (0.0, 1.0),
    cosine: (-1.0, 1.0),
}


def check_hamming_threshold(threshold: int) -> int:
    """``threshold`` as an int in 0..64 (bits of a dHash), else ValueError."""
    if isinstance(threshold, bool) or not _is_integral(threshold):
        raise ValueError(f"the Hamming threshold must be an integer, got {threshold!r}")
    if not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"the Hamming threshold must be in 0..{HASH_BITS}, got {threshold}")
    return int(threshold)


def check_similarity_threshold(threshold: float, low: float = -1.0, high: float = 1.0) -> float:
    """``threshold`` as a float in ``[low, high]``, else ValueError (NaN included)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ValueError(f"the similarity threshold must be a number, got {threshold!r}")
    value = float(threshold)
    if not low <= value <= high:
        raise ValueError(f"the similarity threshold must be in [{low}, {high}], got {threshold}")
    return value


def greedy_hash_reduce(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """The paper's dHash rule on one volume: kept slice indices, sorted.

    As in its released code (``Hash_LIDC_Volume.py``): the first remaining slice is the
    reference; every remaining slice within Hamming distance ``<= threshold`` of it is dropped
    (the reference itself, at distance 0, included); the reference is kept; repeat until no
    slice remains. The paper's Hash-6 is ``threshold=6``.

    This equals "keep a slice unless it is within ``threshold`` of an earlier kept slice": a
    slice survives until a kept reference near it comes up, and every reference before it was
    a kept slice. :func:`medfm.curation.index.dedup_hashes` applies that form to a whole
    dataset. O(slices x kept), vectorised per reference.
    """
    threshold = check_hamming_threshold(threshold)
    values = as_hashes(hashes)
    remaining = np.arange(values.size)
    kept: list[int] = []
    while remaining.size:
        reference, rest = remaining[0], remaining[1:]  # the reference goes (distance 0)
        kept.append(int(reference))
        remaining = rest[hamming(values[rest], values[reference]) > threshold]
    return np.asarray(kept, dtype=np.int64)


def consecutive_reduce(
    units: Sequence[np.ndarray],
    similarity: Callable[[np.ndarray, np.ndarray], float],
    threshold: float,
) -> np.ndarray:
    """Keep the first slice, then each slice whose ``similarity`` to the last kept slice is
    below ``threshold``: kept indices, sorted. Used with :func:`~medfm.curation.similarity.ssim`
    and :func:`~medfm.curation.similarity.normalized_mi`.

    The paper compared SSIM and mutual information between CT slices as redundancy measures;
    comparing with the last kept slice (not the previous one) stops a slow drift through many
    slightly different slices from keeping all of them.

    The threshold must lie in the similarity's range: [-1, 1] for ssim and cosine, [0, 1] for
    normalized_mi, [-1, 1] for any other callable.
    """
    low, high = SIMILARITY_RANGES.get(similarity, (-1.0, 1.0))
    threshold = check_similarity_threshold(threshold, low, high)
    if not len(units):
        return np.zeros(0, dtype=np.int64)
    kept = [0]
    for i in range(1, len(units)):
        if similarity(units[i], units[kept[-1]]) < threshold:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def greedy_similarity_reduce(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Keep a vector unless its cosine similarity to an earlier kept vector is ``>= threshold``:
    kept indices, sorted. For the embeddings of one volume's slices (any encoder).

    The paper compared deep-embedding similarity of CT slices as a redundancy measure; this is
    the dHash rule of :func:`greedy_hash_reduce` with cosine similarity in place of Hamming
    distance. Cosines are computed as :func:`medfm.curation.index.dedup_embeddings` verifies
    them (float64 dot products of the float32 L2-normalised rows), so a volume gives the same
    answer at either scope. O(n x kept x d); ``threshold`` in [-1, 1].
    """
    threshold = check_similarity_threshold(threshold)
    unit = unit_rows(vectors)
    kept = np.empty(len(unit), dtype=np.int64)
    count = 0
    for i in range(len(unit)):
        if count:
            others = kept[:count]
            if pair_cosines(unit, others, np.full(count, i)).max() >= threshold:
                continue
        kept[count] = i
        count += 1
    return kept[:count].copy()


def every_n_reduce(count: int, n: int) -> np.ndarray:
    """Indices 0, n, 2n, ... below ``count``: the paper's simplest baseline, every n-th slice."""
    if isinstance(n, bool) or not _is_integral(n) or n < 1:
        raise ValueError(f"every_n needs an integer n >= 1, got {n!r}")
    if isinstance(count, bool) or not _is_integral(count) or count < 0:
        raise ValueError(f"count must be an integer >= 0, got {count!r}")
    return np.arange(0, int(count), int(n), dtype=np.int64)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``(n, d)`` vectors as C-contiguous float32 rows of unit L2 norm (zero rows stay zero,
    with cosine 0 to everything); ValueError for another shape or NaN/Inf."""
    x = np.array(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected (n, d) vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the vectors hold NaN or Inf values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return np.ascontiguousarray(x)


def pair_cosines(unit: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of the row pairs ``(a[i], b[i])`` of :func:`unit_rows` output, in float64.

    The one definition that both the brute-force rules and the index verify with: row-wise
    products summed along contiguous rows, so equal pairs give bit-equal values either way.
    Two equal non-zero rows give exactly 1.0 (their rounded sum of squares may fall short of
    it), so that a threshold of 1.0 still removes exact duplicates.
    """
    first, second = unit[a], unit[b]
    products = first.astype(np.float64)
    products *= second
    cosines = products.sum(axis=1)
    same = (first == second).all(axis=1) & first.any(axis=1)
    cosines[same] = 1.0
    return cosines


def as_hashes(hashes: np.ndarray) -> np.ndarray:
    """64-bit hashes as a 1-D uint64 array (int64 input is read as the same 64 bits)."""
    values = np.asarray(hashes)
    if values.dtype == np.int64:  # signed storage of the same 64 bits
        values = values.view(np.uint64)
    values = np.asarray(values, dtype=np.uint64)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D array of 64-bit hashes, got shape {values.shape}")
    return values


def _is_integral(value) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()
