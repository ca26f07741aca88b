"""Tests for medfm.robustness.k_selection: kNN balanced accuracy, select_k and the RI-vs-k
curves, on hand-checkable point sets, against croma (an independent implementation of the
PathoROB index) and a brute-force reference."""

import numpy as np
import pytest

from medfm.features.neighbours import knn_search
from medfm.robustness.index import robustness_index
from medfm.robustness.k_selection import ri_curve, ri_curves, select_k, vote_balanced_accuracy


def unit(*degrees):
    """Points on the unit circle; the nearest neighbour by cosine is the nearest by angle."""
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.c_[np.cos(rad), np.sin(rad)]


# The 8-point hand case of tests/robustness/test_index.py (angle, class, center):
#   0: 0 A c1    1: 10 A c2    2: 22 A c1    3: 36 A c2
#   4: 90 B c1   5: 100 B c2   6: 112 B c1   7: 55 B c2
# k=1: SS 0, SO 7, OS 1 (same_bio 7, same_center 1); k=2: SS 3, SO 10, OS 2 (13, 5).
EMB = unit(0, 10, 22, 36, 90, 100, 112, 55)
BIO = np.array(["A", "A", "A", "A", "B", "B", "B", "B"])
CENTER = np.array(["c1", "c2", "c1", "c2", "c1", "c2", "c1", "c2"])


def knn_balanced_accuracy(emb, labels, ks):
    """Leave-one-out kNN balanced accuracy at each k of the increasing ``ks``."""
    return vote_balanced_accuracy(knn_search(emb, max(ks))[0], labels, ks)


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
    assert knn_balanced_accuracy(emb, bio, (1, 2, 3)) == {1: 1.0, 2: 1.0, 3: 1.0}
    assert select_k(emb, bio, grid=(3, 2, 1)) == 1


# ------------------------------------------------------------------------------- RI curve


def test_ri_curve_of_the_hand_case():
    assert ri_curve(EMB, BIO, CENTER, ks=(2, 1)) == {1: 7.0, 2: pytest.approx(13 / 5)}
    normalized = ri_curve(EMB, BIO, CENTER, ks=(1, 2), variant="normalized")
    assert normalized == {1: pytest.approx(7 / 8), 2: pytest.approx(10 / 12)}


@pytest.mark.parametrize("variant", ["ratio", "normalized"])
def test_ri_curve_equals_the_robustness_index_at_each_k(variant, clustered):
    emb, bio, center, patient = clustered(0)
    curve = ri_curve(emb, bio, center, ks=(1, 5, 20), variant=variant, groups=patient)
    for k, value in curve.items():
        assert value == robustness_index(emb, bio, center, k=k, variant=variant, groups=patient)


def test_ri_curves_hold_both_variants_from_one_search(clustered):
    emb, bio, center, patient = clustered(0)
    curves = ri_curves(emb, bio, center, ks=(20, 1, 5), groups=patient)
    assert list(curves) == ["ratio", "normalized"]
    for variant, curve in curves.items():
        assert list(curve) == [1, 5, 20]
        assert curve == ri_curve(emb, bio, center, (1, 5, 20), variant, patient)


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
def test_robustness_index_matches_a_brute_force_reference(variant, use_groups, clustered):
    emb, bio, center, patient = clustered(5, n=160, n_patients=40)
    groups = patient if use_groups else np.arange(len(bio))
    curve = ri_curve(emb, bio, center, (1, 7, 15), variant, patient if use_groups else None)
    for k, value in curve.items():
        assert value == pytest.approx(
            brute_force_ri(emb, bio, center, k, variant, groups), abs=1e-9
        )


@pytest.mark.parametrize("use_groups", [False, True])
def test_normalized_index_and_k_selection_match_croma(use_groups, clustered):
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


def test_bad_k_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"grid=\(1, 50\) asks for k=50.*7 eligible"):
        select_k(EMB, BIO, grid=(1, 50))
    with pytest.raises(ValueError, match="ks=.*positive integer"):
        ri_curve(EMB, BIO, CENTER, ks=(0, 1))
    with pytest.raises(ValueError, match="variant='pathorob'"):
        ri_curve(EMB, BIO, CENTER, ks=(1,), variant="pathorob")
