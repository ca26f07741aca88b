"""Tests for medfm.robustness.center_bio: center vs biology predictability, the grouped folds
and the out-of-fold predictions."""

import numpy as np

from medfm.robustness.center_bio import center_vs_bio, cv_splitter, out_of_fold_predictions


def unit(*degrees):
    """Points on the unit circle; the nearest neighbour by cosine is the nearest by angle."""
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.c_[np.cos(rad), np.sin(rad)]


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


def test_center_vs_bio_sees_a_center_signature(clustered):
    emb, bio, center, patient = clustered(4, bio_scale=0.3, center_scale=3.0)
    result = center_vs_bio(emb, bio, center, k=10, groups=patient)
    assert result["knn_center_acc"] > result["knn_bio_acc"]
    assert result["linear_center_acc"] > result["linear_bio_acc"]


def test_cv_splitter_keeps_every_group_in_one_test_fold():
    labels = np.array(["A", "B"] * 12)
    groups = np.arange(24) // 3  # 8 groups of 3
    splitter = cv_splitter(labels, groups, seed=0, cv=5)
    tested = np.zeros(24, dtype=int)
    for train, test in splitter.split(np.zeros((24, 1)), labels, groups):
        assert not set(groups[train]) & set(groups[test])
        tested[test] += 1
    np.testing.assert_array_equal(tested, 1)  # every sample is tested exactly once


def test_cv_splitter_without_groups_fits_the_rarest_class():
    labels = np.array(["A"] * 10 + ["B"] * 3)
    assert cv_splitter(labels, None, cv=5).get_n_splits() == 3


def test_out_of_fold_predictions_of_separable_arcs_are_all_right():
    predicted = out_of_fold_predictions(ARCS, ARC_BIO)
    np.testing.assert_array_equal(predicted, ARC_BIO)
    patient = np.arange(24) // 2
    np.testing.assert_array_equal(out_of_fold_predictions(ARCS, ARC_BIO, patient, seed=3), ARC_BIO)
