"""Tests for medfm.robustness.analyses: k selection, RI curve and bootstrap, center vs biology,
error
attribution, center pairs, APD and leave-one-center-out, on hand-checkable point sets, against
croma (an independent implementation of the PathoROB index) and a brute-force reference."""

import math

import numpy as np
import pytest

from medfm.heads.registry import KNNHead
from medfm.robustness.analyses import (
    bootstrap_ci,
    center_vs_bio,
    error_attribution,
    knn_balanced_accuracy,
    leave_one_center_out,
    pair_breakdown,
    performance_drop,
    ri_curve,
    select_k,
)
from medfm.robustness.index import nearest_neighbours, robustness_index


def unit(*degrees):
    """Points on the unit circle; the nearest neighbour by cosine is the nearest by angle."""
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.c_[np.cos(rad), np.sin(rad)]


def clustered(seed, n=400, n_patients=80, d=32, bio_scale=2.0, center_scale=1.5):
    """Random embeddings with a class signal, a center signal and patients nested in centers."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, n_patients, n)
    center = patient % 4
    bio = rng.integers(0, 3, n)
    bio[:3] = [0, 1, 2]  # first appearances in sorted order (croma factorises by appearance)
    emb = (
        rng.normal(size=(n, d)) + bio_scale * np.eye(d)[bio] + center_scale * np.eye(d)[4 + center]
    )
    return emb, bio, center, patient


# The 8-point hand case of tests/robustness/test_index.py (angle, class, center):
#   0: 0 A c1    1: 10 A c2    2: 22 A c1    3: 36 A c2
#   4: 90 B c1   5: 100 B c2   6: 112 B c1   7: 55 B c2
# k=1: SS 0, SO 7, OS 1 (same_bio 7, same_center 1); k=2: SS 3, SO 10, OS 2 (13, 5).
EMB = unit(0, 10, 22, 36, 90, 100, 112, 55)
BIO = np.array(["A", "A", "A", "A", "B", "B", "B", "B"])
CENTER = np.array(["c1", "c2", "c1", "c2", "c1", "c2", "c1", "c2"])


# ------------------------------------------------------------------------------ choosing k


def test_select_k_prefers_k1_when_a_small_class_is_swamped_at_larger_k():
    # A at 0..5 degrees, B at 60 and 61. k=1: every nearest neighbour shares the class -> 1.0.
    # k=3: each B point has its twin and then two A points (55+ degrees away) -> both B points
    # are voted A: recall A 1, recall B 0 -> balanced accuracy 0.5.
    emb = unit(0, 1, 2, 3, 4, 5, 60, 61)
    bio = np.array(["A"] * 6 + ["B"] * 2)
    assert knn_balanced_accuracy(emb, bio, (1, 3)) == {1: 1.0, 3: 0.5}
    assert select_k(emb, bio, grid=(3, 1)) == 1


def test_select_k_prefers_k3_when_a_mislabelled_point_misleads_k1():
    # A at 0, 10, 20, 30; B at 100, 110, 120, 130; and a B point at 15 among the As.
    # k=1: A@10 and A@20 take the B@15 (5 deg away): recall A 2/4; B@15 takes A@10: recall B 4/5
    #      -> (0.5 + 0.8) / 2 = 0.65.
    # k=3: every A point has two A and at most one B among its three: recall A 1; B@15 still has
    #      three A neighbours: recall B 4/5 -> 0.9.
    emb = unit(0, 10, 20, 30, 100, 110, 120, 130, 15)
    bio = np.array(["A"] * 4 + ["B"] * 5)
    scores = knn_balanced_accuracy(emb, bio, (1, 3))
    assert scores == {1: pytest.approx(0.65), 3: pytest.approx(0.9)}
    assert select_k(emb, bio, grid=(1, 3)) == 3


def test_select_k_breaks_ties_by_the_smallest_k():
    emb = unit(0, 1, 2, 3, 60, 61, 62, 63)  # two tight clusters: every k <= 3 is perfect
    bio = np.array(["A"] * 4 + ["B"] * 4)
    assert knn_balanced_accuracy(emb, bio, (2, 1, 3)) == {1: 1.0, 2: 1.0, 3: 1.0}
    assert select_k(emb, bio, grid=(3, 2, 1)) == 1


# ------------------------------------------------------------------------------- RI curve


def test_ri_curve_of_the_hand_case():
    assert ri_curve(EMB, BIO, CENTER, ks=(2, 1)) == {1: 7.0, 2: pytest.approx(13 / 5)}
    normalized = ri_curve(EMB, BIO, CENTER, ks=(1, 2), variant="normalized")
    assert normalized == {1: pytest.approx(7 / 8), 2: pytest.approx(10 / 12)}


@pytest.mark.parametrize("variant", ["ratio", "normalized"])
def test_ri_curve_equals_the_robustness_index_at_each_k(variant):
    emb, bio, center, patient = clustered(0)
    curve = ri_curve(emb, bio, center, ks=(1, 5, 20), variant=variant, groups=patient)
    for k, value in curve.items():
        assert value == robustness_index(emb, bio, center, k=k, variant=variant, groups=patient)


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
def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_samples(variant):
    widths = []
    for n, n_patients in [(200, 40), (3200, 640)]:
        emb, bio, center, patient = clustered(1, n=n, n_patients=n_patients)
        estimate = robustness_index(emb, bio, center, k=10, variant=variant, groups=patient)
        lo, hi = bootstrap_ci(emb, bio, center, k=10, variant=variant, groups=patient, seed=3)
        assert lo <= estimate <= hi
        widths.append(hi - lo)
    # 16x the patients: the width shrinks about 4x (1/sqrt(n)); ask for at least 2x
    assert widths[1] < widths[0] / 2


def test_bootstrap_ci_repeats_with_a_seed_and_resamples_groups_as_units():
    emb, bio, center, _ = clustered(2)
    first = bootstrap_ci(emb, bio, center, k=5, n_boot=50, seed=7)
    assert bootstrap_ci(emb, bio, center, k=5, n_boot=50, seed=7) == first
    assert bootstrap_ci(emb, bio, center, k=5, n_boot=50, seed=8) != first
    # one sample per group (numbered in sample order): resampling groups is resampling samples
    singletons = 100 + np.arange(len(bio))
    assert bootstrap_ci(emb, bio, center, k=5, groups=singletons, n_boot=50, seed=7) == first


# ------------------------------------------------------------------------ center vs biology

# Two arcs 1 degree apart: class A at 0..11 degrees, class B at 90..101, the center alternating
# c1, c2 along each arc. With k=3 a point's neighbours are i-1 and i+1 (the other center) and
# one at 2 degrees (its own): the center vote is always wrong, the class vote always right.
ARCS = unit(*range(12), *range(90, 102))
ARC_BIO = np.array(["A"] * 12 + ["B"] * 12)
ARC_CENTER = np.array(["c1", "c2"] * 12)


def test_center_vs_bio_when_the_class_is_encoded_and_the_center_is_not():
    result = center_vs_bio(ARCS, ARC_BIO, ARC_CENTER, k=3)
    assert set(result) == {"knn_center_acc", "knn_bio_acc", "linear_center_acc", "linear_bio_acc"}
    assert result["knn_center_acc"] == 0.0
    assert result["knn_bio_acc"] == 1.0
    assert result["linear_bio_acc"] == 1.0  # the arcs are linearly separable
    assert result["linear_center_acc"] <= 0.5  # alternating centers: no line beats chance


def test_center_vs_bio_with_patients_nested_in_centers():
    # patients {0, 2}, {1, 3}, {4, 6}, ...: one center each. Excluding the patient removes the
    # same-center point at 2 degrees on one side; the next same-center point is 3 degrees away
    # and i-1, i+1 still outvote it.
    patient = np.array([(i // 4) * 2 + i % 2 for i in range(24)])
    result = center_vs_bio(ARCS, ARC_BIO, ARC_CENTER, k=3, groups=patient, seed=1)
    assert result["knn_center_acc"] == 0.0 and result["knn_bio_acc"] == 1.0
    assert result["linear_bio_acc"] == 1.0 and result["linear_center_acc"] <= 0.5


def test_center_vs_bio_sees_a_center_signature():
    emb, bio, center, patient = clustered(4, bio_scale=0.3, center_scale=3.0)
    result = center_vs_bio(emb, bio, center, k=10, groups=patient)
    assert result["knn_center_acc"] > result["knn_bio_acc"]
    assert result["linear_center_acc"] > result["linear_bio_acc"]


# ----------------------------------------------------------------------- error attribution

# index: angle, class, center      neighbours (k=2)   prediction   verdict
#   0:   0  A c1                    1, 2 (B c1, B c1)  B            wrong; B from c1 2/2: center
#   1:   2  B c1                    0, 2               B            right
#   2:   4  B c1                    1, 0               B            right
#   3:  50  A c2                    4, 5 (B c2, A c1)  B            wrong; B from c2 1/1: center
#   4:  52  B c2                    3, 5 (A c2, A c1)  A            wrong; A from c2 1/2: not
#   5:  54  A c1                    4, 3 (B c2, A c2)  B            wrong; B from c1 0/1: not
#   6: 100  A c2                    7, 8               C            wrong; no C: unsupported
#   7: 102  A c2                    6, 8               A            right
#   8: 104  B c2                    7, 6 (A c2, A c2)  A            wrong; A from c2 2/2: center
ERR_EMB = unit(0, 2, 4, 50, 52, 54, 100, 102, 104)
ERR_BIO = np.array(["A", "B", "B", "A", "B", "A", "A", "A", "B"])
ERR_CENTER = np.array(["c1", "c1", "c1", "c2", "c2", "c1", "c2", "c2", "c2"])
ERR_PRED = np.array(["B", "B", "B", "B", "A", "B", "C", "A", "A"])


def test_error_attribution_of_the_hand_case():
    neighbours = np.sort(nearest_neighbours(ERR_EMB, 2), axis=1)  # ties (1, 4, 7) in any order
    expected = [[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4], [7, 8], [6, 8], [6, 7]]
    np.testing.assert_array_equal(neighbours, expected)
    result = error_attribution(ERR_EMB, ERR_BIO, ERR_CENTER, ERR_PRED, k=2)
    # errors 0, 3, 4, 5, 6, 8; center-attributed 0, 3, 8; unsupported 6
    assert result["n_errors"] == 6
    assert result["center_attributed"] == 3 / 6
    assert result["unsupported"] == 1 / 6
    np.testing.assert_array_equal(np.flatnonzero(result["attributed"]), [0, 3, 8])
    assert result["per_center"] == {
        "c1": {"n_errors": 2, "center_attributed": 1 / 2, "unsupported": 0.0},  # errors 0, 5
        "c2": {"n_errors": 4, "center_attributed": 2 / 4, "unsupported": 1 / 4},  # 3, 4, 6, 8
    }


def test_error_attribution_without_errors_is_nan():
    result = error_attribution(ERR_EMB, ERR_BIO, ERR_CENTER, ERR_BIO, k=2)
    assert result["n_errors"] == 0 and math.isnan(result["center_attributed"])
    assert not result["attributed"].any()
    assert math.isnan(result["per_center"]["c1"]["unsupported"])


def test_error_attribution_rejects_predictions_of_another_length():
    with pytest.raises(ValueError, match=r"predicted \(8\) and bio \(9\)"):
        error_attribution(ERR_EMB, ERR_BIO, ERR_CENTER, ERR_PRED[:-1], k=2)


# -------------------------------------------------------------------------- center pairs


def test_pair_breakdown_of_the_hand_case():
    # k=1 neighbours: 0->1, 1->0, 2->1, 3->2, 4->5, 5->4, 6->5, 7->3 (centers alternate c1, c2)
    #   c1 anchors 0, 2, 4, 6 -> c2 four times;  c2 anchors 1, 3, 5 -> c1, 7 -> c2 (class B->A)
    result = pair_breakdown(EMB, BIO, CENTER, k=1)
    np.testing.assert_array_equal(result["centers"], ["c1", "c2"])
    np.testing.assert_array_equal(result["counts"], [[0, 4], [3, 1]])
    np.testing.assert_allclose(result["fractions"], [[0, 1], [0.75, 0.25]])
    np.testing.assert_array_equal(result["same_bio"], [[0, 4], [3, 0]])
    # center-blind: an anchor sees the 3 others of its center and the 4 of the other, of 7
    np.testing.assert_allclose(result["expected"], [[3 / 7, 4 / 7], [4 / 7, 3 / 7]])


def test_pair_breakdown_expected_fractions_exclude_the_group():
    # patients {0, 2}, {1, 3}, {4, 6}, {5, 7}: an anchor's eligible samples are the 2 of its
    # center outside its patient and the 4 of the other center. The k=1 neighbours do not change.
    patient = np.array([0, 1, 0, 1, 2, 3, 2, 3])
    result = pair_breakdown(EMB, BIO, CENTER, k=1, groups=patient)
    np.testing.assert_array_equal(result["counts"], [[0, 4], [3, 1]])
    np.testing.assert_allclose(result["expected"], [[1 / 3, 2 / 3], [2 / 3, 1 / 3]])


# ------------------------------------------------------------------------------------ APD


def _proba(p):
    return np.c_[1 - np.asarray(p), p]


Y = np.array([0, 0, 1, 1])
PERFECT = _proba([0.1, 0.2, 0.8, 0.9])  # AUC 1
THREE_QUARTERS = _proba([0.1, 0.6, 0.4, 0.9])  # 3 of the 4 (negative, positive) pairs ordered
HALF = _proba([0.1, 0.9, 0.1, 0.9])  # pairs: tie, right, wrong, tie -> 0.5


def test_performance_drop_by_hand():
    assert performance_drop(Y, PERFECT, Y, THREE_QUARTERS) == pytest.approx(0.75 / 1 - 1)
    assert performance_drop(Y, PERFECT, [Y, Y], [THREE_QUARTERS, HALF]) == pytest.approx(
        (0.75 + 0.5) / 2 - 1
    )
    assert performance_drop(Y, THREE_QUARTERS, Y, HALF) == pytest.approx(0.5 / 0.75 - 1)
    assert performance_drop(Y, HALF, Y, PERFECT) == pytest.approx(1.0)  # better out of center
    assert performance_drop(Y, PERFECT, Y, PERFECT) == 0.0


def test_performance_drop_matches_pathorob_apd_as_vendored_by_croma():
    croma = pytest.importorskip("croma", reason="croma is not installed (pip install croma)")
    value = performance_drop(Y, THREE_QUARTERS, [Y, Y], [PERFECT, HALF])
    assert value == pytest.approx(croma.apd(np.array([[0.75], [1.0], [0.5]])), abs=1e-12)


def test_performance_drop_rejects_unpaired_test_sets():
    with pytest.raises(ValueError, match="must pair up"):
        performance_drop(Y, PERFECT, [Y], [HALF, HALF])
    with pytest.raises(ValueError, match="single class"):
        performance_drop(Y, PERFECT, np.zeros(4), HALF)


# ---------------------------------------------------------------- leave one center out


def _loco_case():
    """Class read from the sign of feature 0 (A < 0 < B, |x0| in 2..3) in c1, c2, c3 (10 each)
    and c5 (3 A only); reversed in the small c4 (2 A, 2 B). Feature 1 is constant (it carries
    nothing, but keeps the points apart in angle for cosine kNN)."""
    rng = np.random.default_rng(0)
    rows = []
    for name, n_a, n_b, sign in [("c1", 5, 5, 1), ("c2", 5, 5, 1), ("c3", 5, 5, 1),
                                 ("c4", 2, 2, -1), ("c5", 3, 0, 1)]:  # fmt: skip
        for label, n in (("A", n_a), ("B", n_b)):
            for _ in range(n):
                x0 = sign * (1.0 if label == "B" else -1.0) * rng.uniform(2.0, 3.0)
                rows.append(([x0, 1.0], label, name))
    emb, bio, center = zip(*rows, strict=True)
    return np.array(emb), np.array(bio), np.array(center)


def test_leave_one_center_out_by_hand():
    # Trained without c1 (or c2, c3, c5) the probe learns "feature 0 > 0 -> B" from the 23+
    # normal samples (no line also fits the 4 reversed ones; the classes sit 4 apart, so the
    # threshold stays between them) and gets those centers right; trained without c4 it gets all
    # of c4 wrong, with every A scored above every B (AUC 0).
    emb, bio, center = _loco_case()
    result = leave_one_center_out(emb, bio, center)
    assert list(result) == ["c1", "c2", "c3", "c4", "c5"]
    for name in ("c1", "c2", "c3"):
        assert result[name] == {"auc": 1.0, "accuracy": 1.0, "n": 10}
    assert result["c4"] == {"auc": 0.0, "accuracy": 0.0, "n": 4}
    assert math.isnan(result["c5"]["auc"])  # a single class: AUC undefined
    assert result["c5"]["accuracy"] == 1.0 and result["c5"]["n"] == 3


def test_leave_one_center_out_fits_a_fresh_head_per_center():
    emb, bio, center = _loco_case()
    fitted = []

    def factory():
        head = KNNHead(ks=(1,))
        fitted.append(head)
        return head

    result = leave_one_center_out(emb, bio, center, head_factory=factory)
    assert len({id(h) for h in fitted}) == 5
    assert [len(h.train_) for h in fitted] == [len(bio) - (center == c).sum() for c in result]
    for head, name in zip(fitted, result, strict=True):
        test = center == name
        pred = head.predict(emb[test])
        assert result[name]["accuracy"] == np.mean(pred == bio[test])


def test_leave_one_center_out_needs_two_classes_in_training():
    emb = unit(0, 1, 2, 3)
    with pytest.raises(ValueError, match="without center 'c1' the training data hold a single"):
        leave_one_center_out(emb, ["A", "A", "B", "B"], ["c1", "c1", "c2", "c2"])


# ------------------------------------------------------ agreement with other implementations


def brute_force_ri(emb, bio, center, k, variant, groups):
    """Independent reference: the float64 distance matrix and explicit loops over samples."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = 1.0 - x @ x.T
    same_bio = same_center = so = os_ = 0
    for i in range(len(x)):
        eligible = [j for j in range(len(x)) if j != i and groups[j] != groups[i]]
        ranked = sorted(eligible, key=lambda j: (dist[i, j], j))[:k]
        for j in ranked:
            same_bio += bio[j] == bio[i]
            same_center += center[j] == center[i]
            so += bio[j] == bio[i] and center[j] != center[i]
            os_ += bio[j] != bio[i] and center[j] == center[i]
    return same_bio / same_center if variant == "ratio" else so / (so + os_)


@pytest.mark.parametrize("variant", ["ratio", "normalized"])
@pytest.mark.parametrize("use_groups", [False, True])
def test_robustness_index_matches_a_brute_force_reference(variant, use_groups):
    emb, bio, center, patient = clustered(5, n=160, n_patients=40)
    groups = patient if use_groups else np.arange(len(bio))
    curve = ri_curve(emb, bio, center, (1, 7, 15), variant, patient if use_groups else None)
    for k, value in curve.items():
        assert value == pytest.approx(
            brute_force_ri(emb, bio, center, k, variant, groups), abs=1e-9
        )


@pytest.mark.parametrize("use_groups", [False, True])
def test_normalized_index_and_k_selection_match_croma(use_groups):
    # croma (Grisi et al., pip install croma) implements the PathoROB index SO / (SO + OS) with
    # sklearn's cosine NearestNeighbors and chooses k by biological kNN balanced accuracy; it has
    # no "ratio" variant (that one is checked against the brute-force reference above).
    croma = pytest.importorskip("croma", reason="croma is not installed (pip install croma)")
    pd = pytest.importorskip("pandas")
    emb, bio, center, patient = clustered(6)
    groups = patient if use_groups else np.arange(len(bio))
    manifest = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(bio))],
            "image_path": [f"tile{i}.png" for i in range(len(bio))],
            "label": bio,
            "group_id": groups,
            "center": center,
        }
    )
    ks = (5, 10, 20, 50)
    ours_groups = patient if use_groups else None
    expected = croma.RI.compute_curve(emb, manifest, confounder_column="center", k_values=ks)
    ours = ri_curve(emb, bio, center, ks, "normalized", ours_groups)
    assert ours.keys() == expected.keys()
    for k in ks:
        assert ours[k] == pytest.approx(expected[k], abs=1e-9)
    chosen = croma.RI.compute(emb, manifest, confounder_column="center", k_candidates=ks)
    assert select_k(emb, bio, ks, ours_groups) == chosen.k
    assert ours[chosen.k] == pytest.approx(chosen.value, abs=1e-9)


# ---------------------------------------------------------------------------- bad inputs

CALLS = {
    "select_k": lambda e, b, c, k, g: select_k(e, b, (k,), g),
    "ri_curve": lambda e, b, c, k, g: ri_curve(e, b, c, (k,), "ratio", g),
    "bootstrap_ci": lambda e, b, c, k, g: bootstrap_ci(e, b, c, k, groups=g, n_boot=5),
    "center_vs_bio": lambda e, b, c, k, g: center_vs_bio(e, b, c, k, g),
    "error_attribution": lambda e, b, c, k, g: error_attribution(e, b, c, b, k, g),
    "pair_breakdown": lambda e, b, c, k, g: pair_breakdown(e, b, c, k, g),
    "robustness_index": lambda e, b, c, k, g: robustness_index(e, b, c, k=k, groups=g),
}
WITH_CENTER = [name for name in CALLS if name != "select_k"]


@pytest.mark.parametrize("name", list(CALLS))
def test_mismatched_lengths_are_refused(name):
    with pytest.raises(ValueError, match="must have the same length"):
        CALLS[name](EMB, BIO[:-1], CENTER, 1, None)
    if name in WITH_CENTER:
        with pytest.raises(ValueError, match=r"center \(7\) must have the same length"):
            CALLS[name](EMB, BIO, CENTER[:-1], 1, None)
    with pytest.raises(ValueError, match="groups"):
        CALLS[name](EMB, BIO, CENTER, 1, np.arange(7))


@pytest.mark.parametrize("name", WITH_CENTER)
def test_a_single_center_is_refused(name):
    with pytest.raises(ValueError, match=r"center has a single value \('c1' for all 8 samples\)"):
        CALLS[name](EMB, BIO, np.full(8, "c1"), 1, None)


@pytest.mark.parametrize("name", list(CALLS))
def test_a_single_class_is_refused(name):
    with pytest.raises(ValueError, match=r"bio has a single value \('A' for all 8 samples\)"):
        CALLS[name](EMB, np.full(8, "A"), CENTER, 1, None)


@pytest.mark.parametrize("name", list(CALLS))
def test_k_not_below_n_or_above_the_eligible_neighbours_is_refused(name):
    with pytest.raises(ValueError, match="k=8"):
        CALLS[name](EMB, BIO, CENTER, 8, None)
    patient = np.array([0, 0, 0, 0, 1, 1, 2, 2])  # 4 samples outside patient 0
    with pytest.raises(ValueError, match="eligible neighbours"):
        CALLS[name](EMB, BIO, CENTER, 5, patient)


@pytest.mark.parametrize("name", list(CALLS))
def test_nan_embeddings_are_refused(name):
    emb = EMB.copy()
    emb[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf in 1 rows \(first: \[3\]\)"):
        CALLS[name](emb, BIO, CENTER, 1, None)


def test_other_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"grid=\(1, 50\) asks for k=50.*7 eligible"):
        select_k(EMB, BIO, grid=(1, 50))
    with pytest.raises(ValueError, match="ks=.*positive integer"):
        ri_curve(EMB, BIO, CENTER, ks=(0, 1))
    with pytest.raises(ValueError, match="variant='pathorob'"):
        ri_curve(EMB, BIO, CENTER, ks=(1,), variant="pathorob")
    with pytest.raises(ValueError, match="alpha=1.5"):
        bootstrap_ci(EMB, BIO, CENTER, k=1, alpha=1.5)
    with pytest.raises(ValueError, match="center has a single value"):
        leave_one_center_out(EMB, BIO, np.full(8, "c1"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        leave_one_center_out(np.full((8, 2), np.inf), BIO, CENTER)
