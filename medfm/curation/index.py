"""Dataset-scope near-duplicate removal over all units (manifest order), through an index.

The rule is the one of Wolf et al. 2024 ("Less is More: Selective Reduction of CT Data for
Self-Supervised Pre-Training ...", Computers in Biology and Medicine 183:109242): keep a unit
unless it is within the threshold of an earlier kept unit. The paper applied it within each
CT volume; its released code also has a whole-dataset variant (``Hash_AllData.py``, marked
"not done in the paper") that compares every remaining image with every reference, which is
quadratic: about 10 minutes for a million hashes even in vectorised numpy on one core
(benchmarks/curation_speed.py), far longer as the released code runs it. Here the
near-duplicate pairs are found with an index, then the same greedy runs over them in index
order, and the answer equals the brute-force one (:func:`dedup_hashes_bruteforce`,
:func:`dedup_embeddings_bruteforce`):

- dHash (:func:`dedup_hashes`): multi-index hashing, generalised. The 64 bits are cut into
  ``b > t`` chunks. Two hashes within Hamming distance ``t`` differ in at most ``t`` chunks,
  so by the pigeonhole principle they agree exactly on at least ``b - t`` of them, hence on
  one of the ``C(b, t)`` sets of ``b - t`` chunks. One table per such set (its chunks as a
  bit mask) gathers hashes with equal masked bits by sorting; only those candidate pairs are
  checked. ``b = t + 1`` is classic multi-index hashing (Norouzi et al. 2012, radius 0 per
  chunk); a larger ``b`` gives longer keys, far fewer chance collisions, more tables. ``b``
  is chosen by a cost model (for 1M hashes at ``t = 6``: 8 chunks, 28 tables of 16 bits).
- embeddings (:func:`dedup_embeddings`): faiss range search (``IndexFlatIP`` on L2-normalised
  float32 rows) with a small margin below the threshold, candidates then verified with the
  exact cosine of :func:`medfm.curation.reduce.pair_cosines`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from medfm.curation.hashing import popcount
from medfm.curation.reduce import (
    HASH_BITS,
    as_hashes,
    check_hamming_threshold,
    check_similarity_threshold,
    greedy_similarity_reduce,
    pair_cosines,
    unit_rows,
)

MAX_TABLES = 5000
# Cost model of dedup_hashes in seconds, measured on one core of a 2-core machine: per table,
# per hash per table (mask, sort, scan), per candidate pair (gather, XOR, popcount); the brute
# force per hash (its Python loop) and per pair compared.
_COST_TABLE = 5e-5
_COST_SORT = 1.1e-7
_COST_CANDIDATE = 3e-8
_COST_BRUTE_HASH = 5e-6
_COST_BRUTE_PAIR = 1e-9
_QUERY_BLOCK = 4096  # faiss range-search queries per call


def dedup_hashes(hashes: np.ndarray, threshold: int, *, chunks: int | None = None) -> np.ndarray:
    """Kept positions among ``hashes`` (uint64, dataset order): a hash is dropped when it lies
    within Hamming distance ``<= threshold`` of an earlier kept hash. Equal to
    :func:`dedup_hashes_bruteforce`, found with multi-index hashing (module docstring).

    Exact repeats are collapsed first (a repeat is never kept: its first occurrence, or the
    kept hash that removed it, comes earlier). ``chunks`` forces ``b`` (``threshold < b <=
    64``); by default the cost model picks it, or the brute force where no index is cheaper
    (tiny inputs, thresholds far beyond dHash's useful range).
    """
    threshold = check_hamming_threshold(threshold)
    values = as_hashes(hashes)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if threshold >= HASH_BITS:  # every pair is within 64 bits
        return np.zeros(1, dtype=np.int64)
    unique, first = np.unique(values, return_index=True)
    order = np.argsort(first)
    distinct, positions = unique[order], first[order]
    if chunks is None:
        chunks = _plan(distinct.size, threshold)
        if chunks is None:
            return positions[dedup_hashes_bruteforce(distinct, threshold)]
    elif not threshold < chunks <= HASH_BITS:
        raise ValueError(f"chunks must be in {threshold + 1}..{HASH_BITS}, got {chunks}")
    sources, targets = _hash_edges(distinct, threshold, chunks)
    return positions[_greedy_over_edges(distinct.size, sources, targets)]


def dedup_hashes_bruteforce(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """The reference for :func:`dedup_hashes`: each hash in turn is compared with all kept
    hashes before it (O(n x kept))."""
    threshold = check_hamming_threshold(threshold)
    values = as_hashes(hashes)
    kept_values = np.empty(values.size, dtype=np.uint64)
    kept = np.empty(values.size, dtype=np.int64)
    count = 0
    for i, value in enumerate(values):
        if count and popcount(kept_values[:count] ^ value).min() <= threshold:
            continue
        kept_values[count], kept[count] = value, i
        count += 1
    return kept[:count].copy()


def dedup_embeddings(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Kept positions among ``(n, d)`` embeddings (dataset order): a vector is dropped when its
    cosine similarity to an earlier kept vector is ``>= threshold`` (in [-1, 1]). Equal to
    :func:`dedup_embeddings_bruteforce`.

    faiss range search over an exact ``IndexFlatIP`` of the L2-normalised float32 rows gives
    each row's neighbours above ``threshold - margin``; the margin (8 d float32 epsilons, above
    the worst-case rounding of a float32 dot product of unit vectors) keeps every true pair;
    each candidate is then verified in float64 with :func:`~medfm.curation.reduce.pair_cosines`,
    as the brute force does. The search is still all pairs in flops (flat index, BLAS), but in
    bounded memory and far faster than Python loops; the number of neighbour pairs it returns
    grows fast as the threshold drops.
    """
    threshold = check_similarity_threshold(threshold)
    unit = unit_rows(vectors)
    n, dim = unit.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        import faiss
    except ImportError as err:  # faiss-cpu comes with medfm's faiss extra
        raise ImportError("dedup_embeddings needs faiss: pip install faiss-cpu") from err
    index = faiss.IndexFlatIP(dim)
    index.add(unit)
    radius = threshold - 8.0 * dim * float(np.finfo(np.float32).eps)
    sources, targets = [], []
    for start in range(0, n, _QUERY_BLOCK):
        stop = min(start + _QUERY_BLOCK, n)
        limits, _, found = index.range_search(unit[start:stop], radius)
        rows = np.repeat(np.arange(start, stop), np.diff(limits).astype(np.int64))
        later = found > rows
        a, b = rows[later], found[later].astype(np.int64)
        close = pair_cosines(unit, a, b) >= threshold
        sources.append(a[close])
        targets.append(b[close])
    return _greedy_over_edges(n, np.concatenate(sources), np.concatenate(targets))


def dedup_embeddings_bruteforce(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """The reference for :func:`dedup_embeddings`: each vector in turn is compared with all kept
    vectors before it (:func:`medfm.curation.reduce.greedy_similarity_reduce`)."""
    return greedy_similarity_reduce(vectors, threshold)


def _plan(n: int, threshold: int) -> int | None:
    """The number of chunks ``b`` with the lowest modelled cost, or None for brute force."""
    best, best_cost = None, _COST_BRUTE_HASH * n + _COST_BRUTE_PAIR * n * n / 2
    for chunks in range(threshold + 1, HASH_BITS + 1):
        tables = math.comb(chunks, threshold)
        if tables > MAX_TABLES:
            break  # C(b, t) grows with b from here on
        key_bits = HASH_BITS * (chunks - threshold) / chunks
        chance_pairs = n * n / 2 / 2.0**key_bits  # pairs of random hashes with equal keys
        cost = tables * (_COST_TABLE + _COST_SORT * n + _COST_CANDIDATE * chance_pairs)
        if cost < best_cost:
            best, best_cost = chunks, cost
    return best


def _chunk_masks(chunks: int) -> np.ndarray:
    """uint64 masks of ``chunks`` contiguous bit ranges covering 64 bits, widths within 1."""
    bounds = np.linspace(0, HASH_BITS, chunks + 1).round().astype(int)
    return np.array(
        [((1 << int(hi)) - 1) ^ ((1 << int(lo)) - 1) for lo, hi in itertools.pairwise(bounds)],
        dtype=np.uint64,
    )


def _hash_edges(values: np.ndarray, threshold: int, chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of distinct hashes within ``threshold``, each exactly once."""
    masks = _chunk_masks(chunks)
    keep = chunks - threshold
    sources, targets = [], []
    for subset in itertools.combinations(range(chunks), keep):
        key_mask = np.bitwise_or.reduce(masks[list(subset)])
        a, b = _table_pairs(values, key_mask, threshold)
        # report a pair from its first table only: the one of its `keep` lowest equal chunks
        first = _first_equal_chunks(values[a] ^ values[b], masks, keep)
        own = first == np.uint64(sum(1 << c for c in subset))
        sources.append(a[own])
        targets.append(b[own])
    return np.concatenate(sources), np.concatenate(targets)


def _table_pairs(values: np.ndarray, key_mask: np.uint64, threshold: int):
    """Pairs ``i < j`` with equal masked bits and distance ``<= threshold``, by sorting."""
    keys = values & key_mask
    order = np.argsort(keys, kind="stable")  # equal keys keep index order: i < j below
    sorted_keys = keys[order]
    sources, targets = [], []
    starts = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    gap = 1
    while starts.size:  # pairs (p, p + gap) inside runs of equal keys
        a, b = order[starts], order[starts + gap]
        close = popcount(values[a] ^ values[b]) <= threshold
        sources.append(a[close])
        targets.append(b[close])
        gap += 1
        starts = starts[starts + gap < keys.size]
        starts = starts[sorted_keys[starts + gap] == sorted_keys[starts]]
    if not sources:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(sources), np.concatenate(targets)


def _first_equal_chunks(xor: np.ndarray, masks: np.ndarray, keep: int) -> np.ndarray:
    """For each pair's XOR, its ``keep`` lowest equal (all-zero) chunks as a bit set of chunk
    numbers: the first of its tables in ``itertools.combinations`` order."""
    chosen = np.zeros(xor.size, dtype=np.uint64)
    taken = np.zeros(xor.size, dtype=np.int64)
    for chunk, mask in enumerate(masks):
        pick = ((xor & mask) == 0) & (taken < keep)
        chosen[pick] |= np.uint64(1 << chunk)
        taken += pick
    return chosen


def _greedy_over_edges(n: int, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Kept nodes of the near-duplicate graph in index order: a node is kept unless an
    earlier kept node links to it (edges run from the smaller index to the larger)."""
    removed = np.zeros(n, dtype=bool)
    if sources.size:
        order = np.lexsort((targets, sources))
        sources, targets = sources[order], targets[order]
        heads, starts = np.unique(sources, return_index=True)
        ends = np.append(starts[1:], sources.size)
        for head, start, end in zip(heads.tolist(), starts.tolist(), ends.tolist(), strict=True):
            if not removed[head]:
                removed[targets[start:end]] = True
    return np.flatnonzero(~removed).astype(np.int64)
