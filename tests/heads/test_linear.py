"""Tests for medfm.heads.linear: separation in the label space and C chosen on validation."""

import numpy as np

from medfm.heads.linear import LinearProbe
from medfm.metrics.scores import auc


def _blobs(rng, n, shift):
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 5))
    X[:, 0] += np.where(y == 1, shift, -shift)
    return X, np.where(y == 1, "b", "a")


def test_linear_probe_separates_linearly_separable_data_with_string_labels():
    rng = np.random.default_rng(0)
    X, y = _blobs(rng, 80, 6.0)
    X_te, y_te = _blobs(rng, 60, 6.0)
    probe = LinearProbe().fit(X, y)
    assert list(probe.classes_) == ["a", "b"]
    proba = probe.predict_proba(X_te)
    assert proba.shape == (60, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert auc(y_te, proba, probe.classes_) == 1.0
    pred = probe.predict(X_te)
    assert pred.dtype.kind == "U"
    assert set(pred) == {"a", "b"}
    np.testing.assert_array_equal(pred, y_te)


def _correlated(rng, n):
    # A large shared factor f sits in both features; only feature 0 carries the class. The
    # discriminant direction is feature 0 minus feature 1, which only a weakly regularised probe
    # finds; a strongly regularised one follows the (noisy) mean difference.
    y = rng.integers(0, 2, n)
    f = rng.normal(size=n) * 3
    X = np.c_[f + rng.normal(size=n) * 0.3 + y, f + rng.normal(size=n) * 0.3]
    return X, np.where(y == 1, "b", "a")


def test_linear_probe_chooses_c_by_validation_auc():
    rng = np.random.default_rng(0)
    X, y = _correlated(rng, 200)
    X_val, y_val = _correlated(rng, 200)
    Cs = (1e-4, 1e-3, 100.0)
    scores = []
    for c in Cs:
        single = LinearProbe(Cs=(c,)).fit(X, y)
        scores.append(auc(y_val, single.predict_proba(X_val), single.classes_))
    assert scores[2] > max(scores[:2]) + 0.2  # the case really has one best C
    assert LinearProbe(Cs=Cs).fit(X, y, X_val, y_val).C_ == 100.0
    assert LinearProbe(Cs=Cs).fit(X, y).C_ == 1e-3  # without validation: the middle of the grid
    assert LinearProbe(Cs=Cs).fit(X, y, X_val[:3], np.array(["a"] * 3)).C_ == 1e-3
