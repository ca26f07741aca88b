"""Tests for medfm.robustness.attribution: error attribution to same-center neighbours and the
per-center-pair breakdown, on hand-checked point sets."""

import math

import numpy as np
import pytest

from medfm.robustness.attribution import error_attribution, pair_breakdown
from medfm.robustness.index import nearest_neighbours


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
