"""Tests for medfm.robustness.index: neighbours, neighbour counts, the robustness index, its
bootstrap CI and its chance level."""

import math

import numpy as np
import pytest

from medfm.robustness.index import (
    bootstrap_ci,
    chance_level,
    index_from_counts,
    nearest_neighbours,
    neighbour_counts,
    robustness_index,
)


def unit(*degrees):
    """Points on the unit circle; the nearest neighbour by cosine is the nearest by angle."""
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.c_[np.cos(rad), np.sin(rad)]


# ------------------------------------------------------------------------ nearest neighbours

# Exact duplicates in direction: rows 0, 2, 4 all normalise to (1, 0); rows 1, 3 to (0, 1).
# Every cosine similarity is then exactly 1 or 0.
DUPES = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])


def test_nearest_neighbours_exclude_self_and_break_ties_by_lower_index():
    # row 0: sim 1 with 2 and 4 (self excluded)        row 1: sim 1 with 3, then 0 with 0, 2, 4
    # row 2: sim 1 with 0 and 4                        row 3: sim 1 with 1, then 0 with 0, 2, 4
    # row 4: sim 1 with 0 and 2
    expected = np.array([[2, 4], [3, 0], [0, 4], [1, 0], [0, 2]])
    np.testing.assert_array_equal(nearest_neighbours(DUPES, k=2), expected)
    np.testing.assert_array_equal(nearest_neighbours(DUPES, k=1), expected[:, :1])
    out = nearest_neighbours(DUPES, k=4)
    assert out.shape == (5, 4) and out.dtype == np.int64
    assert not (out == np.arange(5)[:, None]).any()
    # row 4: ties at 1 with 0 and 2, then ties at 0 with 1 and 3, all in index order
    np.testing.assert_array_equal(out[4], [0, 2, 1, 3])


def test_nearest_neighbours_exclude_samples_of_the_same_group():
    groups = np.array(["p", "q", "p", "q", "r"])
    # row 0 (p): 2 is excluded -> 4 (sim 1), then 1 (sim 0, lowest of 1 and 3)
    # row 1 (q): 3 is excluded -> 0, 2 (all sim 0)  row 2 (p): 0 excluded -> 4, then 1
    # row 3 (q): 1 excluded -> 0, 2                 row 4 (r): nothing excluded -> 0, 2
    expected = np.array([[4, 1], [0, 2], [4, 1], [0, 2], [0, 2]])
    np.testing.assert_array_equal(nearest_neighbours(DUPES, k=2, groups=groups), expected)


def test_nearest_neighbours_refuse_k_above_the_samples_outside_the_group():
    # Each sample has only 2 samples outside its group; asking for 3 must not silently return
    # itself or a same-group sample as a "neighbour".
    emb = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    with pytest.raises(ValueError):
        nearest_neighbours(emb, k=3, groups=np.array([0, 0, 1, 1]))


def test_nearest_neighbours_do_not_depend_on_the_chunk_size():
    emb = np.random.default_rng(0).normal(size=(37, 6))
    groups = np.random.default_rng(1).integers(0, 9, 37)
    for g in (None, groups):
        reference = nearest_neighbours(emb, k=5, groups=g)
        for chunk in (1, 4, 36, 37):
            np.testing.assert_array_equal(nearest_neighbours(emb, 5, g, chunk=chunk), reference)


def test_nearest_neighbours_reject_k_not_below_n():
    with pytest.raises(ValueError, match=r"k=5 must be smaller than the number of samples \(5\)"):
        nearest_neighbours(DUPES, k=5)


# ------------------------------------------------------------------------------ hand cases

# Eight points on the unit circle (angle in degrees, class, center):
#   0: 0 A c1    1: 10 A c2    2: 22 A c1    3: 36 A c2
#   4: 90 B c1   5: 100 B c2   6: 112 B c1   7: 55 B c2
ANGLES = (0, 10, 22, 36, 90, 100, 112, 55)
BIO = np.array(["A", "A", "A", "A", "B", "B", "B", "B"])
CENTER = np.array(["c1", "c2", "c1", "c2", "c1", "c2", "c1", "c2"])
EMB = unit(*ANGLES)

# k=1 nearest (angle distance):     relation to the sample (S/O class, S/O center)
#   0 -> 1 (10)                      A c2 vs A c1: SO
#   1 -> 0 (10; 2 is at 12)          SO
#   2 -> 1 (12; 3 is at 14)          SO
#   3 -> 2 (14; 7 is at 19)          SO
#   7 -> 3 (19; 2 at 33, 4 at 35)    A c2 vs B c2: OS
#   4 -> 5 (10)                      SO
#   5 -> 4 (10; 6 is at 12)          SO
#   6 -> 5 (12)                      SO
# SS 0, SO 7, OS 1, OO 0.
K1 = {"same_bio": 7, "same_center": 1, "SS": 0, "SO": 7, "OS": 1, "OO": 0}

# k=2 adds the second nearest:
#   0 -> 2 (22): A c1, SS            1 -> 2 (12): A c1 vs c2, SO
#   2 -> 3 (14): SO                  3 -> 7 (19): B c2 vs A c2, OS
#   7 -> 2 (33): A c1 vs B c2, OO    4 -> 6 (22): B c1, SS
#   5 -> 6 (12): SO                  6 -> 4 (22): SS
# Together with k=1: SS 3, SO 7 + 3 = 10, OS 1 + 1 = 2, OO 1  (3 + 10 + 2 + 1 = 16 = 8 * 2).
K2 = {"same_bio": 13, "same_center": 5, "SS": 3, "SO": 10, "OS": 2, "OO": 1}


def test_nearest_neighbours_of_the_hand_case():
    expected = np.array([[1, 2], [0, 2], [1, 3], [2, 7], [5, 6], [4, 6], [5, 4], [3, 2]])
    np.testing.assert_array_equal(nearest_neighbours(EMB, k=2), expected)


@pytest.mark.parametrize(("k", "counts"), [(1, K1), (2, K2)])
def test_neighbour_counts_of_the_hand_case(k, counts):
    assert neighbour_counts(nearest_neighbours(EMB, k), BIO, CENTER) == counts


@pytest.mark.parametrize(
    ("k", "ratio", "normalized"),
    [
        (1, 7 / 1, 7 / (7 + 1)),  # same_bio / same_center; SO / (SO + OS)
        (2, 13 / 5, 10 / (10 + 2)),
    ],
)
def test_robustness_index_when_biology_dominates(k, ratio, normalized):
    assert robustness_index(EMB, BIO, CENTER, k=k) == pytest.approx(ratio)
    assert robustness_index(EMB, BIO, CENTER, k=k, variant="ratio") == pytest.approx(ratio)
    value = robustness_index(EMB, BIO, CENTER, k=k, variant="normalized")
    assert value == pytest.approx(normalized)
    assert ratio > 1 and normalized > 0.5


@pytest.mark.parametrize(
    ("k", "ratio", "normalized"),
    [
        (1, 1 / 7, 1 / (1 + 7)),
        (2, 5 / 13, 2 / (2 + 10)),
    ],
)
def test_robustness_index_when_the_center_dominates(k, ratio, normalized):
    # The same points with the roles of class and center swapped: the clusters now follow the
    # center. SS and OO stay, SO and OS trade places, so the ratio is inverted and the normalized
    # index becomes 1 minus itself: k=1 SO 1, OS 7; k=2 SS 3, SO 2, OS 10.
    bio = np.where(CENTER == "c1", "A", "B")
    center = np.where(BIO == "A", "c1", "c2")
    assert robustness_index(EMB, bio, center, k=k) == pytest.approx(ratio)
    value = robustness_index(EMB, bio, center, k=k, variant="normalized")
    assert value == pytest.approx(normalized)
    assert ratio < 1 and normalized < 0.5


def test_robustness_index_accepts_lists_as_in_its_docstring():
    emb = [[1, 0], [1, 0.1], [0, 1], [0.1, 1]]
    # every nearest neighbour shares the class and not the center: no same-center neighbour
    assert robustness_index(emb, bio=[0, 0, 1, 1], center=[0, 1, 0, 1], k=1) == math.inf
    assert (
        robustness_index(emb, bio=[0, 0, 1, 1], center=[0, 1, 0, 1], k=1, variant="normalized")
        == 1.0
    )


def test_robustness_index_excluding_same_patient_neighbours():
    # Three patients with two near-identical tiles each (angles in degrees):
    #   P1: 0, 1 (A, c1)    P2: 10, 11 (A, c2)    P3: -12, -11 (B, c1)
    emb = unit(0, 1, 10, 11, -12, -11)
    bio = np.array(["A", "A", "A", "A", "B", "B"])
    center = np.array(["c1", "c1", "c2", "c2", "c1", "c1"])
    patient = np.array(["P1", "P1", "P2", "P2", "P3", "P3"])
    # Without groups every nearest neighbour (k=1) is the twin tile: 6 SS -> ratio 6/6, and
    # SO + OS = 0 -> normalized is nan.
    assert robustness_index(emb, bio, center, k=1) == 1.0
    assert math.isnan(robustness_index(emb, bio, center, k=1, variant="normalized"))
    # Excluding the same patient:  0 -> 10 (10 deg; -11 is at 11): SO     1 -> 10 (9): SO
    #   10 -> 1 (9): SO    11 -> 1 (10): SO    -11 -> 0 (11): OS    -12 -> 0 (12): OS
    # SO 4, OS 2, SS 0: ratio 4/2, normalized 4/6.
    assert robustness_index(emb, bio, center, k=1, groups=patient) == pytest.approx(2.0)
    assert robustness_index(
        emb, bio, center, k=1, variant="normalized", groups=patient
    ) == pytest.approx(4 / 6)


# ------------------------------------------------------------------------------- invariances


def _random_case(seed, n=60, d=8):
    rng = np.random.default_rng(seed)
    bio = rng.integers(0, 3, n)
    center = rng.integers(0, 4, n)
    emb = rng.normal(size=(n, d)) + 1.5 * np.eye(d)[bio] + 1.0 * np.eye(d)[4 + center]
    return emb, bio, center, rng.integers(0, 20, n)


@pytest.mark.parametrize("variant", ["ratio", "normalized"])
def test_robustness_index_does_not_depend_on_sample_order(variant):
    emb, bio, center, patient = _random_case(0)
    perm = np.random.default_rng(1).permutation(len(emb))
    for groups in (None, patient):
        value = robustness_index(emb, bio, center, k=5, variant=variant, groups=groups)
        permuted = robustness_index(
            emb[perm],
            bio[perm],
            center[perm],
            k=5,
            variant=variant,
            groups=None if groups is None else groups[perm],
        )
        assert permuted == pytest.approx(value)
    # and on the hand case, with exact values
    perm = np.random.default_rng(2).permutation(8)
    assert robustness_index(EMB[perm], BIO[perm], CENTER[perm], k=2) == pytest.approx(13 / 5)


@pytest.mark.parametrize("variant", ["ratio", "normalized"])
def test_robustness_index_does_not_depend_on_positive_scaling(variant):
    emb, bio, center, _ = _random_case(3)
    scale = np.random.default_rng(4).uniform(0.01, 100.0, size=(len(emb), 1))
    value = robustness_index(emb, bio, center, k=5, variant=variant)
    assert robustness_index(emb * scale, bio, center, k=5, variant=variant) == pytest.approx(value)
    assert robustness_index(emb * 7.0, bio, center, k=5, variant=variant) == pytest.approx(value)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_neighbour_counts_partition_all_pairs(k):
    emb, bio, center, patient = _random_case(5)
    counts = neighbour_counts(nearest_neighbours(emb, k, patient), bio, center)
    assert counts["SS"] + counts["SO"] + counts["OS"] + counts["OO"] == len(emb) * k
    assert counts["same_bio"] == counts["SS"] + counts["SO"]
    assert counts["same_center"] == counts["SS"] + counts["OS"]


# ------------------------------------------------------------------------------------ errors


def test_robustness_index_rejects_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        robustness_index(EMB, BIO[:-1], CENTER, k=1)
    with pytest.raises(ValueError, match="same length"):
        robustness_index(EMB, BIO, CENTER[:-1], k=1)


def test_robustness_index_rejects_k_not_below_n():
    with pytest.raises(ValueError, match="k=8 must be smaller"):
        robustness_index(EMB, BIO, CENTER, k=8)


def test_robustness_index_rejects_an_unknown_variant():
    with pytest.raises(ValueError, match="variant='pathorob'"):
        robustness_index(EMB, BIO, CENTER, k=1, variant="pathorob")


# ------------------------------------------------------------------- one counter, one formula


@pytest.mark.parametrize(("k", "totals"), [(1, K1), (2, K2)])
def test_per_sample_counts_add_up_to_the_totals(k, totals):
    per_sample = neighbour_counts(nearest_neighbours(EMB, k), BIO, CENTER, per_sample=True)
    assert {key: int(v.sum()) for key, v in per_sample.items()} == totals
    # anchor 7 (B c2) at k=1 has neighbour 3 (A c2): other class, same center
    assert [int(per_sample[key][7]) for key in ("same_bio", "same_center", "OS")] == [0, 1, 1]


def test_index_from_counts_when_undefined():
    none = {"same_bio": 3, "same_center": 0, "SO": 0, "OS": 0}
    assert index_from_counts(none, "ratio") == math.inf
    assert math.isnan(index_from_counts(none, "normalized"))
    with pytest.raises(ValueError, match="variant='x'"):
        index_from_counts(K1, "x")


def test_chance_level_by_hand():
    # 2 classes x 2 centers, one sample each: same bio 1 per sample, same center 1 per sample
    chance = chance_level(np.array(["a", "a", "b", "b"]), np.array(["x", "y", "x", "y"]))
    assert chance["robustness_index"] == 1.0
    # SO: same class other center = 1 per sample (4); OS: other class same center = 4
    assert chance["robustness_index_normalized"] == 0.5
    # 3 of class a in center x, 1 of b in y: same bio 3 * 2 = 6 pairs, same center 6, SS 6
    lopsided = chance_level(np.array(["a", "a", "a", "b"]), np.array(["x", "x", "x", "y"]))
    assert lopsided["robustness_index"] == 1.0 and math.isnan(
        lopsided["robustness_index_normalized"]
    )


# ------------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_of_a_symmetric_case_is_a_point():
    # Three pairs 10 degrees apart, each pair one class and two centers, pairs far apart: every
    # anchor's nearest neighbour is its partner (same class, other center): SO 1, OS 0 for all,
    # so every replicate has normalized index 1 and ratio inf.
    emb = unit(0, 10, 120, 130, 240, 250)
    bio, center = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0, 1])
    assert bootstrap_ci(emb, bio, center, k=1, variant="normalized") == (1.0, 1.0)
    assert bootstrap_ci(emb, bio, center, k=1, variant="ratio") == (math.inf, math.inf)


@pytest.mark.parametrize("variant", ["ratio", "normalized"])
def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_samples(variant, clustered):
    widths = []
    for n, n_patients in [(200, 40), (3200, 640)]:
        emb, bio, center, patient = clustered(1, n=n, n_patients=n_patients)
        estimate = robustness_index(emb, bio, center, k=10, variant=variant, groups=patient)
        lo, hi = bootstrap_ci(emb, bio, center, k=10, variant=variant, groups=patient, seed=3)
        assert lo <= estimate <= hi
        widths.append(hi - lo)
    # 16x the patients: the width shrinks about 4x (1/sqrt(n)); ask for at least 2x
    assert widths[1] < widths[0] / 2


def test_bootstrap_ci_repeats_with_a_seed_and_resamples_groups_as_units(clustered):
    emb, bio, center, _ = clustered(2)
    first = bootstrap_ci(emb, bio, center, k=5, n_boot=50, seed=7)
    assert bootstrap_ci(emb, bio, center, k=5, n_boot=50, seed=7) == first
    assert bootstrap_ci(emb, bio, center, k=5, n_boot=50, seed=8) != first
    # one sample per group (numbered in sample order): resampling groups is resampling samples
    singletons = 100 + np.arange(len(bio))
    assert bootstrap_ci(emb, bio, center, k=5, groups=singletons, n_boot=50, seed=7) == first
