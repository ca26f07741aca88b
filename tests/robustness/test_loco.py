"""Tests for medfm.robustness.loco: leave-one-center-out on the evaluation's own folds."""

import math

import numpy as np
import pytest

from medfm.evaluation.protocols import loco_folds
from medfm.heads.knn import KNNHead
from medfm.robustness.loco import leave_one_center_out


def unit(*degrees):
    """Points on the unit circle; the nearest neighbour by cosine is the nearest by angle."""
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.c_[np.cos(rad), np.sin(rad)]


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


def test_leave_one_center_out_holds_out_the_folds_of_the_evaluation_protocol():
    emb, bio, center = _loco_case()
    numbered = np.array([int(c[1]) for c in center])  # 1..5: keys come back as strings
    result = leave_one_center_out(emb, bio, numbered)
    assert list(result) == [name for name, _ in loco_folds(numbered)] == ["1", "2", "3", "4", "5"]
    assert [r["n"] for r in result.values()] == [int(m.sum()) for _, m in loco_folds(numbered)]
    assert result["4"] == {"auc": 0.0, "accuracy": 0.0, "n": 4}
