"""Tests for medfm.robustness.apd: the performance drop by hand, against croma, and the average
over leave-one-center-out folds."""

import numpy as np
import pytest

from medfm.robustness.apd import average_performance_drop, performance_drop


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


def _sign_rule(centers, n_per=20, seed=0):
    """Class read from the sign of feature 0 (B > 0 > A); reversed in ``centers`` marked -1."""
    rng = np.random.default_rng(seed)
    emb, bio, center = [], [], []
    for name, sign in centers:
        for i in range(n_per):
            label = "AB"[i % 2]
            x0 = sign * (1.0 if label == "B" else -1.0) * rng.uniform(2.0, 3.0)
            emb.append([x0, 1.0])
            bio.append(label)
            center.append(name)
    return np.array(emb), np.array(bio), np.array(center)


def test_average_performance_drop_is_zero_when_every_center_follows_the_same_rule():
    emb, bio, center = _sign_rule([("c1", 1), ("c2", 1), ("c3", 1)])
    assert average_performance_drop(emb, bio, center) == 0.0


def test_average_performance_drop_is_minus_one_when_the_rule_flips_between_centers():
    # held-out c2: trained on c1 (B > 0), in-center AUC 1, c2 reversed: AUC 0 -> drop -1; and
    # the same the other way round
    emb, bio, center = _sign_rule([("c1", 1), ("c2", -1)])
    assert average_performance_drop(emb, bio, center, seed=1) == pytest.approx(-1.0)


def test_average_performance_drop_is_none_without_a_usable_fold():
    # every center holds a single class: no fold has two classes out of center
    emb = np.c_[np.r_[-np.ones(6), np.ones(6)], np.ones(12)]
    bio = np.array(["A"] * 6 + ["B"] * 6)
    center = np.array(["c1"] * 6 + ["c2"] * 6)
    assert average_performance_drop(emb, bio, center) is None


def test_average_performance_drop_skips_folds_with_a_class_the_head_never_saw():
    # class C only in c3: holding out c3 tests on a class unseen in training (no AUC), so only
    # the folds holding out c1 and c2 count (both follow the same rule: drop 0)
    emb, bio, center = _sign_rule([("c1", 1), ("c2", 1), ("c3", 1)])
    emb = np.r_[emb, [[0.0, 5.0]] * 4]
    bio, center = np.r_[bio, ["C"] * 4], np.r_[center, ["c3"] * 4]
    assert average_performance_drop(emb, bio, center) == pytest.approx(0.0)
