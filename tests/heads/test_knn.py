"""Tests for medfm.heads.knn: hand-computed votes, k chosen on validation, centring, and the
neighbours coming from the one kNN search (medfm.features.neighbours.knn_search)."""

import math

import numpy as np
import pytest

import medfm.heads.knn as knn_module
from medfm.heads.knn import KNNHead, reference_neighbours
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


# ------------------------------------------------------- neighbours from the one kNN search


def _dense_knn_proba(head, X, k):
    """The head's former implementation: dense similarities and a stable argsort."""
    sims = (knn_module.unit_rows(np.asarray(X, dtype=np.float32) - head.mean_)) @ head.train_.T
    k = min(k, sims.shape[1])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sims, top, 1).astype(np.float64) / head.temperature)
    votes = np.stack(
        [(weights * (head.y_index_[top] == c)).sum(1) for c in range(len(head.classes_))], 1
    )
    return votes / votes.sum(1, keepdims=True)


@pytest.mark.parametrize("center", [True, False])
def test_knn_gives_the_dense_search_result_and_chooses_the_same_k(center):
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(150, 12)), rng.integers(0, 3, 150)
    X[:, 0] += y
    X_val, y_val = rng.normal(size=(40, 12)), rng.integers(0, 3, 40)
    X_val[:, 0] += y_val
    X_te = rng.normal(size=(60, 12))
    head = KNNHead(ks=(1, 5, 10, 20), center=center).fit(X, y, X_val, y_val)
    scores = [auc(y_val, _dense_knn_proba(head, X_val, k), head.classes_) for k in head.ks]
    assert head.k_ == head.ks[int(np.argmax(scores))]
    np.testing.assert_allclose(
        head.predict_proba(X_te), _dense_knn_proba(head, X_te, head.k_), rtol=1e-5, atol=1e-7
    )


def test_knn_asks_knn_search_for_training_neighbours_only(monkeypatch):
    calls = []
    real = knn_module.knn_search

    def spy(embeddings, k, groups=None, **kw):
        calls.append((len(embeddings), k, groups, kw["queries"]))
        return real(embeddings, k, groups, **kw)

    monkeypatch.setattr(knn_module, "knn_search", spy)
    train, queries = unit(0, 10, 20, 200), unit(3, 4, 195)
    idx, sims = reference_neighbours(train, queries, 2)
    ((n, k, groups, asked),) = calls
    assert (n, k) == (7, 2) and asked.tolist() == [4, 5, 6]
    assert groups.tolist() == [0, 1, 2, 3, 4, 4, 4]  # the queries share one group
    # the queries at 3 and 4 degrees are 1 degree apart, closer than any training point, yet
    # their neighbours are training points only: 0 (3 and 4 degrees off), then 10
    assert idx.tolist() == [[0, 1], [0, 1], [3, 0]]
    np.testing.assert_allclose(sims[:, 0], np.cos(np.deg2rad([3, 4, 5])), rtol=1e-6)


def test_ties_go_to_the_lower_training_index_and_k_is_capped():
    train = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    idx, _ = reference_neighbours(train, np.array([[1.0, 0.0]]), 5)
    assert idx.tolist() == [[0, 1, 2]]
    empty_idx, empty_sims = reference_neighbours(train, np.zeros((0, 2)), 2)
    assert empty_idx.shape == empty_sims.shape == (0, 2)
