"""Tests for medfm.heads.registry: the kNN head, the linear probe and their scikit-learn API."""

import math

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from medfm.heads.registry import HEADS, KNNHead, LinearProbe
from medfm.metrics.scores import auc


def unit(*degrees):
    """Points on the unit circle at the given angles; cosine similarity = cos(angle difference)."""
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.c_[np.cos(rad), np.sin(rad)]


# ---------------------------------------------------------------------------- kNN, by hand

# Training points and their cosine similarity to the query direction (1, 0):
#   (1, 0) "a": 1    (0, 1) "b": 0    (1, 1) "b": 1/sqrt(2)    (-1, 0) "a": -1    (3, 4) "a": 0.6
X_HAND = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [3.0, 4.0]])
Y_HAND = np.array(["a", "b", "b", "a", "a"])


def test_knn_predict_proba_matches_hand_computed_temperature_weighted_votes():
    head = KNNHead(ks=(3,), temperature=0.5, center=False).fit(X_HAND, Y_HAND)
    # The 3 most similar to the query: (1,0) "a" sim 1, (1,1) "b" sim 1/sqrt 2, (3,4) "a" sim .6;
    # votes exp(sim / 0.5).
    w_a = math.exp(1 / 0.5) + math.exp(0.6 / 0.5)
    w_b = math.exp(math.sqrt(0.5) / 0.5)
    expected = np.array([[w_a, w_b]]) / (w_a + w_b)
    # the query's length does not matter (cosine similarity)
    np.testing.assert_allclose(head.predict_proba([[2.0, 0.0]]), expected, rtol=1e-5)
    np.testing.assert_allclose(head.predict_proba([[0.25, 0.0]]), expected, rtol=1e-5)
    assert list(head.classes_) == ["a", "b"]
    assert head.predict([[2.0, 0.0]]).tolist() == ["a"]


def test_knn_with_k_above_the_training_size_votes_with_every_training_point():
    head = KNNHead(ks=(10,), temperature=0.5, center=False).fit(X_HAND, Y_HAND)
    w_a = math.exp(1 / 0.5) + math.exp(-1 / 0.5) + math.exp(0.6 / 0.5)
    w_b = math.exp(0 / 0.5) + math.exp(math.sqrt(0.5) / 0.5)
    np.testing.assert_allclose(
        head.predict_proba([[1.0, 0.0]]), [[w_a / (w_a + w_b), w_b / (w_a + w_b)]], rtol=1e-5
    )


def test_knn_predict_proba_rows_sum_to_one_and_follow_classes():
    head = KNNHead(ks=(2,), temperature=0.1, center=False).fit(X_HAND, Y_HAND)
    # query (0, 1): nearest are (0, 1) "b" sim 1 and (3, 4) "a" sim 0.8 (ahead of (1, 1) "b" at
    # 1/sqrt 2) -> p("a") = e^8 / (e^8 + e^10) = 1 / (1 + e^2)
    p_a = 1 / (1 + math.exp(2))
    np.testing.assert_allclose(head.predict_proba([[0.0, 5.0]]), [[p_a, 1 - p_a]], rtol=1e-5)
    proba = head.predict_proba(np.random.default_rng(0).normal(size=(7, 2)))
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert head.predict([[0.0, 5.0], [1.0, 0.01]]).tolist() == ["b", "a"]
    # with k=1 the single nearest neighbour takes all the votes
    np.testing.assert_allclose(
        KNNHead(ks=(1,), center=False).fit(X_HAND, Y_HAND).predict_proba([[0.0, 5.0]]), [[0.0, 1.0]]
    )


# ------------------------------------------------------------------ kNN, choosing k on validation


def _val_auc(X, y, X_val, y_val, k):
    head = KNNHead(ks=(k,)).fit(X, y)
    return auc(y_val, head.predict_proba(X_val), head.classes_)


def test_knn_chooses_k_1_when_the_second_and_third_neighbours_mislead():
    # "a" at 0 deg with two "b" close by at 5 and 7 deg; mirror image around 90 deg.
    X = unit(0, 5, 7, 90, 85, 83)
    y = np.array(["a", "b", "b", "b", "a", "a"])
    # Validation "a" at 2 deg: nearest 0 ("a"), then 5, 7 ("b").  "b" at 88 deg: nearest 90 ("b"),
    # then 85, 83 ("a").  So k=1 ranks both right; k=3 (and k=5) outvote the nearest one.
    X_val, y_val = unit(2, 88), np.array(["a", "b"])
    assert [_val_auc(X, y, X_val, y_val, k) for k in (1, 3, 5)] == [1.0, 0.0, 0.0]
    head = KNNHead(ks=(1, 3, 5)).fit(X, y, X_val, y_val)
    assert head.k_ == 1
    assert KNNHead(ks=(1, 3, 5)).fit(X, y).k_ == 3  # without validation: the middle of the grid


def test_knn_chooses_a_larger_k_when_the_nearest_neighbour_is_noise():
    # Clean "a" at 0, 10, 20 deg and "b" at 80, 90, 100 deg; one mislabelled point inside each
    # cluster: "b" at 5 deg and "a" at 85 deg.
    X = unit(0, 10, 20, 5, 80, 90, 100, 85)
    y = np.array(["a", "a", "a", "b", "b", "b", "b", "a"])
    # Validation "a" at 4 deg: neighbours 5 ("b", 1 deg), 0 ("a", 4 deg), 10 ("a", 6 deg).
    # k=1 and k=2 give it a majority of "b"; k=3 a majority of "a" (mirror image for 86 deg).
    X_val, y_val = unit(4, 86), np.array(["a", "b"])
    assert [_val_auc(X, y, X_val, y_val, k) for k in (1, 2, 3)] == [0.0, 0.0, 1.0]
    head = KNNHead(ks=(1, 2, 3)).fit(X, y, X_val, y_val)
    assert head.k_ == 3
    assert KNNHead(ks=(1, 2, 3)).fit(X, y).k_ == 2


def test_knn_ignores_a_single_class_validation_split():
    X = unit(0, 5, 7, 90, 85, 83)
    y = np.array(["a", "b", "b", "b", "a", "a"])
    head = KNNHead(ks=(1, 3, 5)).fit(X, y, unit(2), np.array(["a"]))
    assert head.k_ == 3


# ------------------------------------------------------------------------------ linear probe


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


# -------------------------------------------------------------------------- scikit-learn API

HEAD_CASES = [
    (LinearProbe, {"Cs": (0.5, 2.0), "max_iter": 300}, ["C_", "model_", "classes_"]),
    (
        KNNHead,
        {"ks": (1, 3), "temperature": 0.2, "center": True},
        ["train_", "mean_", "classes_", "y_index_", "k_"],
    ),
]


@pytest.mark.parametrize(("cls", "params", "learned"), HEAD_CASES)
def test_heads_follow_the_scikit_learn_estimator_api(cls, params, learned):
    head = cls(**params)
    assert head.get_params() == params
    assert vars(head) == params  # __init__ only stores its arguments
    with pytest.raises(NotFittedError):
        check_is_fitted(head)

    X, y = _blobs(np.random.default_rng(1), 40, 4.0)
    assert head.fit(X, y) is head
    check_is_fitted(head)
    assert set(vars(head)) == set(params) | set(learned)
    assert all(name.endswith("_") for name in set(vars(head)) - set(params))

    copy = clone(head)
    assert type(copy) is cls and copy is not head
    assert copy.get_params() == params
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    first = next(iter(params))
    assert copy.set_params(**{first: params[first] * 2}) is copy
    assert copy.get_params()[first] == params[first] * 2
    assert head.get_params() == params


@pytest.mark.parametrize("name", sorted(HEADS))
def test_both_heads_predict_in_the_original_label_space(name):
    X, y = _blobs(np.random.default_rng(2), 60, 6.0)
    head = HEADS[name]().fit(X, y)
    X_te, y_te = _blobs(np.random.default_rng(3), 30, 6.0)
    assert head.predict(X_te).tolist() == y_te.tolist()
    assert head.score(X_te, y_te) == 1.0  # ClassifierMixin.score = accuracy


def test_centred_knn_is_plain_knn_on_features_centred_on_the_training_mean():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)) + 10.0, rng.integers(0, 2, 40)
    query = rng.normal(size=(6, 5)) + 10.0
    centred = KNNHead(ks=(5,)).fit(X, y)
    plain = KNNHead(ks=(5,), center=False).fit(X - X.mean(0), y)
    np.testing.assert_allclose(
        centred.predict_proba(query), plain.predict_proba(query - X.mean(0)), rtol=1e-4
    )
    # a shared offset of every feature vector no longer changes the neighbours
    shifted = KNNHead(ks=(5,)).fit(X + 100.0, y)
    np.testing.assert_allclose(
        shifted.predict_proba(query + 100.0), centred.predict_proba(query), rtol=1e-3
    )
