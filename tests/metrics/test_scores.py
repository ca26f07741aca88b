"""Tests for medfm.metrics.scores: AUC (binary and macro one-vs-rest) and accuracy."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medfm.metrics.scores import accuracy, auc


def _binary_proba(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.c_[1 - p1, p1]


def test_binary_auc_hand_case():
    # positives score .35 and .8, negatives .1 and .4: of the 4 (pos, neg) pairs only (.35, .4)
    # is ranked wrongly, so AUC = 3/4.
    y = np.array([0, 0, 1, 1])
    proba = _binary_proba([0.1, 0.4, 0.35, 0.8])
    assert auc(y, proba) == pytest.approx(0.75)


def test_binary_auc_counts_ties_as_half():
    # pairs: (.5 vs .5) tie -> 1/2, (.5 vs .2) -> 1, (.9 vs .5) -> 1, (.9 vs .2) -> 1: 3.5 / 4
    y = np.array([0, 0, 1, 1])
    proba = _binary_proba([0.5, 0.2, 0.5, 0.9])
    assert auc(y, proba) == pytest.approx(0.875)


def test_binary_auc_uses_the_column_of_the_second_class():
    # classes ("b", "a"): column 1 holds the score of "a", so "a" is the positive class.
    y = np.array(["b", "b", "a", "a"])
    p_a = np.array([0.1, 0.4, 0.35, 0.8])
    proba = np.c_[1 - p_a, p_a]
    assert auc(y, proba, classes=np.array(["b", "a"])) == pytest.approx(0.75)
    # with the column order declared the other way round, the same scores rank "b" first
    assert auc(y, proba, classes=np.array(["a", "b"])) == pytest.approx(0.25)


# Three classes, two samples each; rows sum to 1.
Y3 = np.array([0, 0, 1, 1, 2, 2])
P3 = np.array(
    [
        [0.6, 0.3, 0.1],
        [0.3, 0.4, 0.3],
        [0.2, 0.7, 0.1],
        [0.5, 0.2, 0.3],
        [0.1, 0.2, 0.7],
        [0.4, 0.3, 0.3],
    ]
)
# Per-class one-vs-rest AUC by counting (positive, negative) pairs, ties = 1/2:
#   class 0: pos {.6, .3}, neg {.2, .5, .1, .4}: .6 beats 4, .3 beats .2 and .1      -> 6/8
#   class 1: pos {.7, .2}, neg {.3, .4, .2, .3}: .7 beats 4, .2 ties once           -> 4.5/8
#   class 2: pos {.7, .3}, neg {.1, .3, .1, .3}: .7 beats 4, .3 beats 2, ties 2     -> 7/8
OVR_BY_HAND = [6 / 8, 4.5 / 8, 7 / 8]


def test_multiclass_auc_is_the_mean_of_one_vs_rest_aucs():
    per_class_sklearn = [roc_auc_score(Y3 == c, P3[:, c]) for c in range(3)]
    np.testing.assert_allclose(per_class_sklearn, OVR_BY_HAND)
    assert auc(Y3, P3) == pytest.approx(np.mean(OVR_BY_HAND))
    assert auc(Y3, P3) == pytest.approx(2.1875 / 3)


def test_multiclass_auc_with_string_classes():
    labels = np.array(["x", "y", "z"])
    assert auc(labels[Y3], P3, classes=labels) == pytest.approx(np.mean(OVR_BY_HAND))


def test_multiclass_auc_skips_classes_absent_from_the_test_split():
    # Only classes 0 and 1 are present; class 2's column is scored against nothing.
    y = np.array([0, 0, 1, 1])
    proba = np.array(
        [
            [0.6, 0.3, 0.1],
            [0.3, 0.4, 0.3],
            [0.2, 0.7, 0.1],
            [0.5, 0.2, 0.3],
        ]
    )
    # class 0: pos {.6, .3} vs neg {.2, .5}: .6 beats both, .3 beats .2       -> 3/4
    # class 1: pos {.7, .2} vs neg {.3, .4}: .7 beats both, .2 beats none     -> 2/4
    assert auc(y, proba) == pytest.approx((0.75 + 0.5) / 2)


def test_auc_rejects_a_single_class_test_split():
    with pytest.raises(ValueError, match="single class"):
        auc(np.array([1, 1, 1]), _binary_proba([0.2, 0.5, 0.9]))


def test_auc_rejects_length_mismatch():
    with pytest.raises(ValueError, match=r"labels \(3\) and predictions \(4\) differ in length"):
        auc(np.array([0, 1, 1]), _binary_proba([0.2, 0.5, 0.9, 0.1]))


def test_accuracy_counts_matching_labels():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == pytest.approx(0.75)
    assert accuracy(np.array(["a", "b"]), np.array(["b", "a"])) == 0.0
    assert accuracy(np.array(["a", "b", "c"]), np.array(["a", "b", "c"])) == 1.0


def test_accuracy_rejects_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1, 1], [0, 1])
