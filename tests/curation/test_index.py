"""Dataset-scope deduplication through an index gives exactly the brute-force answer."""

from __future__ import annotations

import numpy as np
import pytest

from medfm.curation import index
from medfm.curation.index import (
    dedup_embeddings,
    dedup_embeddings_bruteforce,
    dedup_hashes,
    dedup_hashes_bruteforce,
)


def planted_hashes(n: int, max_flips: int, seed: int, fraction: float = 0.4) -> np.ndarray:
    """Random 64-bit hashes, ``fraction`` of them replaced by copies of others with 0 to
    ``max_flips`` random bits flipped (near-duplicates on both sides of a threshold), some of
    copies, so that chains form."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    copies = int(n * fraction)
    for _ in range(2):  # the second round copies copies: chains of near-duplicates
        targets = rng.choice(n, copies // 2, replace=False)
        sources = rng.integers(0, n, copies // 2)
        flips = rng.integers(0, max_flips + 1, copies // 2)
        positions = np.argsort(rng.random((copies // 2, 64)), axis=1).astype(np.uint64)
        bits = np.where(np.arange(64) < flips[:, None], np.uint64(1) << positions, np.uint64(0))
        hashes[targets] = hashes[sources] ^ np.bitwise_or.reduce(bits, axis=1)
    return hashes


@pytest.mark.parametrize("threshold", [0, 3, 6, 10])
def test_dedup_hashes_equals_brute_force_on_planted_near_duplicates(threshold: int) -> None:
    hashes = planted_hashes(20_000, threshold + 3, seed=threshold)
    expected = dedup_hashes_bruteforce(hashes, threshold)
    if threshold <= 6:  # at t = 10 and this size the cost model rightly prefers brute force
        assert index._plan(hashes.size, threshold) is not None
    assert np.array_equal(dedup_hashes(hashes, threshold), expected)
    assert 0.6 * hashes.size < expected.size < 0.95 * hashes.size  # planted ones were dropped
    for chunks in {threshold + 1, threshold + 2, min(threshold + 4, 64)}:
        assert np.array_equal(dedup_hashes(hashes, threshold, chunks=chunks), expected), chunks


def test_dedup_hashes_handles_repeats_chains_and_signed_storage() -> None:
    hashes = planted_hashes(3_000, 8, seed=11)
    hashes[100:200] = hashes[50]  # a block of exact repeats (blank slices hash alike)
    for threshold in (0, 2, 6, 9, 16):
        expected = dedup_hashes_bruteforce(hashes, threshold)
        for chunks in (None, threshold + 1, threshold + 3):
            got = dedup_hashes(hashes.view(np.int64), threshold, chunks=chunks)
            assert np.array_equal(got, expected), (threshold, chunks)


def test_dedup_hashes_edge_cases() -> None:
    assert dedup_hashes(np.zeros(0, np.uint64), 6).size == 0
    assert dedup_hashes(np.array([5], np.uint64), 6).tolist() == [0]
    hashes = planted_hashes(500, 5, seed=2)
    assert dedup_hashes(hashes, 64).tolist() == [0]
    assert dedup_hashes_bruteforce(hashes, 64).tolist() == [0]
    assert dedup_hashes(np.array([0, 0b111, 0b1111111], np.uint64), 3, chunks=5).tolist() == [0, 2]


def test_dedup_hashes_bad_thresholds_and_chunks_raise() -> None:
    hashes = planted_hashes(100, 3, seed=0)
    for threshold in (-1, 65, 2.5):
        with pytest.raises(ValueError, match="Hamming threshold"):
            dedup_hashes(hashes, threshold)
        with pytest.raises(ValueError, match="Hamming threshold"):
            dedup_hashes_bruteforce(hashes, threshold)
    with pytest.raises(ValueError, match="chunks must be in 7..64"):
        dedup_hashes(hashes, 6, chunks=6)


def planted_embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """Random directions, a third of them replaced by noisy copies of others (cosine ~0.9 to
    ~0.999), some copies of copies."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    for scale in (0.05, 0.3):
        targets = rng.choice(n, n // 6, replace=False)
        sources = rng.integers(0, n, n // 6)
        noise = rng.normal(size=(n // 6, dim)) * rng.uniform(0.01, scale, (n // 6, 1))
        vectors[targets] = vectors[sources] + noise * np.linalg.norm(vectors[sources], axis=1)[
            :, None
        ] / np.sqrt(dim)
    return vectors * rng.uniform(0.5, 3.0, (n, 1)).astype(np.float32)  # norms do not matter


@pytest.mark.parametrize("threshold", [0.2, 0.9, 0.97, 0.999])
def test_dedup_embeddings_equals_brute_force(threshold: float) -> None:
    pytest.importorskip("faiss")
    vectors = planted_embeddings(3_000, 48, seed=int(threshold * 1000))
    expected = dedup_embeddings_bruteforce(vectors, threshold)
    got = dedup_embeddings(vectors, threshold)
    assert np.array_equal(got, expected)
    if threshold >= 0.9:
        assert 0.6 * len(vectors) < expected.size < len(vectors)


def test_dedup_embeddings_edge_cases_and_bad_thresholds() -> None:
    pytest.importorskip("faiss")
    assert dedup_embeddings(np.zeros((0, 8), np.float32), 0.9).size == 0
    same = np.ones((4, 8), np.float32)
    assert dedup_embeddings(same, 1.0).tolist() == [0]  # float32 rounding leaves 1.0 reachable
    assert dedup_embeddings(np.eye(5), 0.5).tolist() == [0, 1, 2, 3, 4]
    assert dedup_embeddings(np.eye(5), -1.0).tolist() == [0]
    for threshold in (1.5, -1.01, float("nan")):
        with pytest.raises(ValueError, match="similarity threshold"):
            dedup_embeddings(np.eye(3), threshold)
