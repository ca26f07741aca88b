"""Tests for medfm.features.neighbours: exact cosine kNN, torch and faiss backends, ties, bounded
memory."""

import numpy as np
import pytest

import medfm.features.neighbours as knn
from medfm.features.neighbours import faiss_available, knn_search, max_neighbours
from medfm.robustness.index import nearest_neighbours

needs_faiss = pytest.mark.skipif(
    not faiss_available(), reason="faiss is not installed (pip install faiss-cpu / medfm[faiss])"
)
BACKENDS = ["torch", pytest.param("faiss", marks=needs_faiss)]


def brute_force(embeddings, k, groups=None):
    """Reference: the full float64 similarity matrix, excluded pairs at -inf, a stable sort."""
    sims = cosine_matrix(embeddings)
    np.fill_diagonal(sims, -np.inf)
    if groups is not None:
        groups = np.asarray(groups)
        sims[groups[:, None] == groups[None, :]] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, 1)


def cosine_matrix(embeddings):
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def random_case(seed, n=300, d=16, n_groups=60):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, n_groups, n)


def row_gaps(embeddings, k, groups=None):
    """Per row, the smallest float64 similarity gap among the first k + 1 ranks: how far the
    row's top k is from a tie (float32 rounding is about 1e-7)."""
    _, sims = brute_force(embeddings, k + 1, groups)
    return np.min(-np.diff(sims, axis=1), axis=1)


def min_gap(embeddings, k, groups=None):
    return float(row_gaps(embeddings, k, groups).min())


# ------------------------------------------------------------------ agreement with brute force


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_groups", [False, True])
@pytest.mark.parametrize("k", [1, 5, 17])
def test_backends_match_the_brute_force_reference(backend, use_groups, k):
    emb, groups = random_case(0)
    groups = groups if use_groups else None
    assert min_gap(emb, k, groups) > 1e-6  # no near-ties: float32 must give the same order
    expected, expected_sims = brute_force(emb, k, groups)
    for chunk in (1, 7, 64, 300, 5000):
        idx, sims = knn_search(emb, k, groups, chunk=chunk, backend=backend)
        np.testing.assert_array_equal(idx, expected)
        np.testing.assert_allclose(sims, expected_sims, atol=1e-5)
        assert idx.dtype == np.int64 and sims.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_neighbours_passes_the_backend_through(backend):
    emb, groups = random_case(1)
    expected, _ = brute_force(emb, 4, groups)
    np.testing.assert_array_equal(nearest_neighbours(emb, 4, groups, backend=backend), expected)
    np.testing.assert_array_equal(nearest_neighbours(emb, 4, groups, 16, backend=backend), expected)


@needs_faiss
@pytest.mark.parametrize("use_groups", [False, True])
def test_faiss_and_torch_are_identical_on_data_without_ties(use_groups):
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(8, 64))
    emb = centers[rng.integers(0, 8, 2000)] + 0.7 * rng.normal(size=(2000, 64))
    groups = rng.integers(0, 400, 2000) if use_groups else None
    # With 2000 x 11 ranks a few rows hold near-ties (gap < 1e-6, below what float32 matmuls
    # done by different BLAS kernels can order alike); every other row must be identical.
    tie_free = row_gaps(emb, 10, groups) > 1e-6
    assert tie_free.mean() > 0.99
    by_torch = knn_search(emb, 10, groups, backend="torch")
    by_faiss = knn_search(emb, 10, groups, backend="faiss")
    np.testing.assert_array_equal(by_faiss[0][tie_free], by_torch[0][tie_free])
    np.testing.assert_array_equal(by_torch[0][tie_free], brute_force(emb, 10, groups)[0][tie_free])
    np.testing.assert_allclose(by_faiss[1], by_torch[1], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_queries_return_the_rows_of_the_full_search(backend):
    emb, groups = random_case(11)
    queries = np.array([299, 0, 17, 17, 150])
    for g in (None, groups):
        full_idx, full_sims = knn_search(emb, 7, g, backend=backend)
        idx, sims = knn_search(emb, 7, g, backend=backend, queries=queries, chunk=2)
        np.testing.assert_array_equal(idx, full_idx[queries])
        np.testing.assert_allclose(sims, full_sims[queries], atol=1e-6)  # other matmul shapes
    assert knn_search(emb, 3, queries=np.array([], dtype=int), backend=backend)[0].shape == (0, 3)


def test_auto_backend_matches_torch():
    emb, groups = random_case(3)
    for g in (None, groups):
        np.testing.assert_array_equal(
            knn_search(emb, 6, g, backend="auto")[0], knn_search(emb, 6, g, backend="torch")[0]
        )


# ---------------------------------------------------------------------------------- ties

# 40 copies each of 3 directions, shuffled: every row ties with 39 others at similarity 1, far
# more than k + margin candidates, so the candidate search must hand these rows to the exact
# tie resolution (all values above the k-th, then the lowest indices at it).
TIED = np.repeat(np.eye(3) * np.array([1.0, 2.0, 5.0]), 40, axis=0)[
    np.random.default_rng(4).permutation(120)
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 5, 39, 45, 79])
def test_ties_go_to_the_lower_index_with_any_chunk_and_margin(backend, k):
    groups = np.arange(120) // 4
    for g in (None, groups):
        if k > max_neighbours(120, g):
            continue
        expected, _ = brute_force(TIED, k, g)
        for chunk, margin in [(1, 0), (7, 1), (120, 8), (33, 200)]:
            idx, sims = knn_search(TIED, k, g, chunk=chunk, margin=margin, backend=backend)
            np.testing.assert_array_equal(idx, expected)
            assert set(np.unique(sims)) <= {0.0, 1.0}


def test_tie_resolution_of_a_single_row_by_hand():
    # similarities (-inf = excluded): the top 3 are 0.9 (index 4), then the two lowest indices
    # among the 0.5s (0 and 1), not 2, 5 or 6.
    sims = knn.torch.tensor([[0.5, 0.5, 0.5, -np.inf, 0.9, 0.5, 0.5]])
    idx, vals = knn._exact_rows(sims, 3)
    assert idx.tolist() == [[4, 0, 1]]
    np.testing.assert_allclose(vals.numpy(), [[0.9, 0.5, 0.5]])


def test_results_repeat_exactly():
    emb, groups = random_case(5)
    emb = np.concatenate([emb, emb[:50]])  # 50 exact duplicates
    groups = np.concatenate([groups, groups[:50] + 1000])
    first = knn_search(emb, 8, groups)
    for _ in range(3):
        again = knn_search(emb, 8, groups)
        np.testing.assert_array_equal(again[0], first[0])
        np.testing.assert_array_equal(again[1], first[1])
    expected, expected_sims = brute_force(emb, 8, groups)
    found_sims = np.take_along_axis(cosine_matrix(emb), first[0], 1)
    np.testing.assert_allclose(found_sims, expected_sims, atol=1e-6)
    # A duplicate pair ties exactly only in exact arithmetic: float32 matmul kernels (which differ
    # between BLAS builds) may round the two similarities apart, so the pair can come in either
    # order. Wherever the answer differs from the reference, it holds the other copy.
    differs = first[0] != expected
    assert differs.sum() < differs.size // 10
    np.testing.assert_array_equal(emb[first[0][differs]], emb[expected[differs]])


# ------------------------------------------------------------------------- bounded memory


def _spy_on_tiles(monkeypatch):
    shapes = []
    original = knn._similarity_block

    def spy(queries, x, col0, col1, out):
        tile = original(queries, x, col0, col1, out)
        shapes.append(tuple(tile.shape))
        return tile

    monkeypatch.setattr(knn, "_similarity_block", spy)
    return shapes


def test_the_similarity_tile_is_bounded_by_chunk_and_block_bytes(monkeypatch):
    emb, groups = random_case(6, n=500)
    expected, _ = brute_force(emb, 5, groups)
    shapes = _spy_on_tiles(monkeypatch)
    # block_bytes allows 3 rows of 500 float32 similarities; chunk allows 64
    idx, _ = knn_search(emb, 5, groups, chunk=64, backend="torch", block_bytes=3 * 500 * 4)
    np.testing.assert_array_equal(idx, expected)
    assert {s[0] for s in shapes[:-1]} == {3} and {s[1] for s in shapes} == {500}
    assert sum(s[0] for s in shapes) == 500
    shapes.clear()
    idx, _ = knn_search(emb, 5, groups, chunk=2, backend="torch")
    np.testing.assert_array_equal(idx, expected)
    assert max(s[0] for s in shapes) == 2 and len(shapes) == 250


@pytest.mark.parametrize("use_groups", [False, True])
def test_column_tiles_are_merged_exactly(monkeypatch, use_groups):
    # tiles of 8 rows x 100 columns: each row's top k is merged from 5 tiles
    monkeypatch.setattr(knn, "MIN_TILE", 64)
    emb, groups = random_case(7, n=500)
    groups = groups if use_groups else None
    shapes = _spy_on_tiles(monkeypatch)
    idx, sims = knn_search(emb, 9, groups, chunk=8, backend="torch", block_bytes=8 * 100 * 4)
    assert set(shapes) == {(8, 100), (4, 100)}  # 500 = 62 * 8 + 4 rows
    assert len(shapes) == 63 * 5
    expected, expected_sims = brute_force(emb, 9, groups)
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-5)


def test_ties_across_column_tiles_fall_back_exactly(monkeypatch):
    monkeypatch.setattr(knn, "MIN_TILE", 16)
    groups = np.arange(120) // 4
    for g in (None, groups):
        for k in (1, 5, 45):
            idx, _ = knn_search(TIED, k, g, chunk=8, margin=2, backend="torch", block_bytes=512)
            np.testing.assert_array_equal(idx, brute_force(TIED, k, g)[0])


def test_dense_and_sparse_group_masks_agree(monkeypatch):
    # (row, column) pairs, except for the 100-sample groups under the small budget: 20 rows x 100
    # pairs x 16 bytes exceed 2560 bytes, so those tiles are compared densely
    emb, _ = random_case(7)
    monkeypatch.setattr(knn, "MIN_TILE", 32)
    for groups in (np.arange(300) % 3, np.arange(300) // 2):
        k = min(10, max_neighbours(300, groups))
        for block_bytes in (knn.BLOCK_BYTES, 20 * 32 * 4):  # one tile per row chunk, or many
            idx, _ = knn_search(emb, k, groups, chunk=20, backend="torch", block_bytes=block_bytes)
            np.testing.assert_array_equal(idx, brute_force(emb, k, groups)[0])


def test_the_callers_array_is_not_modified():
    emb = np.random.default_rng(8).normal(size=(50, 4)).astype(np.float32)
    copy = emb.copy()
    knn_search(emb, 3)
    np.testing.assert_array_equal(emb, copy)


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_embeddings_are_refused_naming_the_rows(bad):
    emb = np.ones((6, 3))
    emb[4, 1] = bad
    with pytest.raises(ValueError, match=r"embeddings contain NaN or Inf in 1 rows \(first: \[4\]"):
        knn_search(emb, 2)


def test_k_must_be_below_n_and_the_eligible_neighbours():
    emb, _ = random_case(9, n=10)
    with pytest.raises(ValueError, match=r"k=10 must be smaller than the number of samples \(10\)"):
        knn_search(emb, 10)
    groups = np.array(["a"] * 4 + ["b"] * 3 + ["c"] * 3)
    with pytest.raises(ValueError, match=r"group 'a' has 4 of the 10 samples.*at most 6"):
        knn_search(emb, 7, groups)
    assert knn_search(emb, 6, groups)[0].shape == (10, 6)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            knn_search(emb, k)


def test_other_bad_arguments_are_named():
    emb, _ = random_case(10, n=10)
    with pytest.raises(ValueError, match="2-D"):
        knn_search(emb[0], 1)
    with pytest.raises(ValueError, match=r"embeddings \(\d+\) and groups \(\d+\) differ in length"):
        knn_search(emb, 1, groups=np.arange(9))
    with pytest.raises(ValueError, match="backend='annoy'"):
        knn_search(emb, 1, backend="annoy")
    with pytest.raises(ValueError, match="chunk=0"):
        knn_search(emb, 1, chunk=0)
    with pytest.raises(ValueError, match="margin=-1"):
        knn_search(emb, 1, margin=-1)
    with pytest.raises(ValueError, match=r"queries must index the 10 samples \(0 to 9\)"):
        knn_search(emb, 1, queries=[3, 10])
    with pytest.raises(ValueError, match="queries must be a 1-D array of sample indices"):
        knn_search(emb, 1, queries=[0.5])


def test_faiss_backend_without_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setattr(knn, "faiss_available", lambda: False)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        knn_search(np.eye(3), 1, backend="faiss")
    # and "auto" falls back to torch
    np.testing.assert_array_equal(knn_search(np.eye(3), 1)[0], [[1], [0], [0]])
