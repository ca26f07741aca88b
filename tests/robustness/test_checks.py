"""Tests for medfm.robustness.checks: every analysis refuses bad labels, groups, k and
embeddings with a message that names the argument."""

import numpy as np
import pytest

from medfm.robustness.attribution import error_attribution, pair_breakdown
from medfm.robustness.center_bio import center_vs_bio
from medfm.robustness.checks import plain
from medfm.robustness.index import bootstrap_ci, robustness_index
from medfm.robustness.k_selection import ri_curve, select_k
from medfm.robustness.loco import leave_one_center_out


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


def test_leave_one_center_out_refuses_a_single_center_and_nan():
    with pytest.raises(ValueError, match="center has a single value"):
        leave_one_center_out(EMB, BIO, np.full(8, "c1"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        leave_one_center_out(np.full((8, 2), np.inf), BIO, CENTER)


def test_plain_turns_numpy_values_and_keys_into_python():
    value = plain({np.int64(3): np.float32(0.5), "a": (np.arange(2), [np.str_("x")])})
    assert value == {"3": 0.5, "a": [[0, 1], ["x"]]}
    assert type(next(iter(value))) is str and type(value["a"][0][0]) is int
