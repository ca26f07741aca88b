"""Volume-scope rules of medfm.curation.reduce against hand-worked examples."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medfm.curation.hashing import dhash_batch
from medfm.curation.index import dedup_hashes_bruteforce
from medfm.curation.reduce import (
    consecutive_reduce,
    every_n_reduce,
    greedy_hash_reduce,
    greedy_similarity_reduce,
)
from medfm.curation.similarity import cosine, normalized_mi, ssim

# A volume of 8 slice hashes, worked by hand (bit positions counted from the least significant).
VOLUME = np.array(
    [
        0x0,  # 0: the first reference
        0x7,  # 1: bits 0-2, 3 from slice 0
        0xFF00,  # 2: bits 8-15, 8 from slice 0
        0x1FF,  # 3: bits 0-8, 9 from slice 0, 6 from slice 1, 15 from slice 2
        0xFF00,  # 4: a repeat of slice 2
        0x3FFF00,  # 5: bits 8-21, 6 from slice 2, 14 from slice 0
        0x7FFF00,  # 6: bits 8-22, 7 from slice 2, 1 from slice 5, 15 from slice 0, 22 from 3
        0xFFFFFFFFFFFFFFFF,  # 7: all 64 bits, 49 or more from every other slice
    ],
    dtype=np.uint64,
)
# threshold 6 (Hash-6): 0 drops 1; 2 (8 > 6) stays and drops 4 and 5 (6 <= 6); 3 stays, as
# the slice it is close to (1) was dropped, not kept; 6 is 7 bits from 2; 7 is far from all.
# threshold 0: only the repeat goes. threshold 7: 2 now drops 6 too. threshold 9: 0 drops 1,
# 2 and 3; 5 is the next reference (14 from 0) and drops 6 (1 bit); 7 stays.
EXPECTED = {0: [0, 1, 2, 3, 5, 6, 7], 6: [0, 2, 3, 6, 7], 7: [0, 2, 3, 7], 9: [0, 5, 7], 64: [0]}


@pytest.mark.parametrize("threshold", sorted(EXPECTED))
def test_greedy_hash_reduce_on_a_hand_worked_volume(threshold: int) -> None:
    kept = greedy_hash_reduce(VOLUME, threshold)
    assert kept.tolist() == EXPECTED[threshold]
    assert kept.dtype == np.int64
    # the same as "keep unless within the threshold of an earlier kept slice"
    assert dedup_hashes_bruteforce(VOLUME, threshold).tolist() == EXPECTED[threshold]


def test_greedy_hash_reduce_equals_keep_unless_near_an_earlier_kept_on_random_volumes() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        base = rng.integers(0, 2**64, 5, dtype=np.uint64)
        volume = base[rng.integers(0, 5, 60)] ^ (np.uint64(1) << rng.integers(0, 64, 60, np.uint64))
        for threshold in (0, 1, 2, 6, 12, 40):
            assert np.array_equal(
                greedy_hash_reduce(volume, threshold), dedup_hashes_bruteforce(volume, threshold)
            )


def test_greedy_hash_reduce_on_a_real_mr_volume() -> None:
    frames = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array  # 10 slices
    hashes = dhash_batch(list(frames))
    kept = [greedy_hash_reduce(hashes, t).size for t in (0, 6, 20, 64)]
    assert kept[0] == len(set(hashes.tolist())) and kept[-1] == 1
    assert kept == sorted(kept, reverse=True)
    assert greedy_hash_reduce(hashes, 6)[0] == 0
    assert greedy_hash_reduce(np.zeros(0, np.uint64), 6).size == 0
    assert greedy_hash_reduce(hashes[:1], 6).tolist() == [0]


def test_consecutive_reduce_compares_with_the_last_kept_unit() -> None:
    values = [0.0, 0.05, 0.1, 0.3, 0.32, 1.0]
    units = [np.array([v]) for v in values]

    def closeness(a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - abs(float(a[0] - b[0]))

    # 0.05 and 0.1 are within 0.1 of the kept 0.0 (0.1 is 0.05 from the dropped 0.05, so the
    # previous slice is not what counts); 0.32 is within 0.1 of the kept 0.3
    assert consecutive_reduce(units, closeness, 0.9).tolist() == [0, 3, 5]
    assert consecutive_reduce(units, closeness, 0.5).tolist() == [0, 5]
    assert consecutive_reduce(units, closeness, -1.0).tolist() == [0]
    assert consecutive_reduce([], closeness, 0.9).size == 0


def test_consecutive_reduce_with_ssim_and_mi_on_a_real_volume() -> None:
    frames = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array.astype(float)
    slices = list(frames)
    for similarity, low in ((ssim, -1.0), (normalized_mi, 0.0)):
        counts = [consecutive_reduce(slices, similarity, t).size for t in (low, 0.3, 0.6, 1.0)]
        assert counts[0] == 1 and counts[-1] == len(slices)  # nothing is >= 1 but a copy
        assert counts == sorted(counts)
    repeated = [slices[0], slices[0].copy(), slices[1]]
    assert consecutive_reduce(repeated, ssim, 0.99).tolist() == [0, 2]


def test_greedy_similarity_reduce_on_hand_worked_vectors() -> None:
    s = np.sqrt(0.5)
    vectors = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [s, s], [-1.0, 0.0], [3.0, 0.0]])
    # row 1: cosine 0.990 to row 0; row 3: 0.707 to rows 0 and 2; row 5: 1.0 to row 0
    assert greedy_similarity_reduce(vectors, 0.95).tolist() == [0, 2, 3, 4]
    assert greedy_similarity_reduce(vectors, 0.7).tolist() == [0, 2, 4]
    assert greedy_similarity_reduce(vectors, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert greedy_similarity_reduce(vectors, -1.0).tolist() == [0]
    assert greedy_similarity_reduce(np.ones((3, 7)), 1.0).tolist() == [0]  # exact copies go
    assert greedy_similarity_reduce(np.zeros((0, 4)), 0.5).size == 0
    zeros = np.zeros((2, 3))  # no direction: cosine 0 to everything, so both are kept at 0.5
    assert greedy_similarity_reduce(zeros, 0.5).tolist() == [0, 1]
    assert cosine(zeros[0], zeros[1]) == 0.0


def test_every_n_reduce() -> None:
    assert every_n_reduce(10, 3).tolist() == [0, 3, 6, 9]
    assert every_n_reduce(10, 1).tolist() == list(range(10))
    assert every_n_reduce(0, 2).size == 0
    assert every_n_reduce(3, 5).tolist() == [0]


@pytest.mark.parametrize("threshold", [-1, 65, 6.5, "6", None, True])
def test_hamming_threshold_out_of_range_raises(threshold) -> None:
    with pytest.raises(ValueError, match="Hamming threshold"):
        greedy_hash_reduce(VOLUME, threshold)


def test_similarity_thresholds_out_of_range_raise() -> None:
    units = [np.ones((16, 16)), np.zeros((16, 16))]
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        consecutive_reduce(units, normalized_mi, -0.1)
    with pytest.raises(ValueError, match=r"\[-1.0, 1.0\]"):
        consecutive_reduce(units, ssim, 1.5)
    with pytest.raises(ValueError, match="similarity threshold"):
        consecutive_reduce(units, ssim, float("nan"))
    assert consecutive_reduce(units, ssim, -0.5).tolist() == [0]  # in range for ssim
    with pytest.raises(ValueError, match=r"\[-1.0, 1.0\]"):
        greedy_similarity_reduce(np.eye(3), 1.01)
    with pytest.raises(ValueError, match=r"\[-1.0, 1.0\]"):
        greedy_similarity_reduce(np.eye(3), -2)
    for n in (0, -3, 1.5):
        with pytest.raises(ValueError, match="n >= 1"):
            every_n_reduce(10, n)
