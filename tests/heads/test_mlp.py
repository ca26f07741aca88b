"""Tests for medfm.heads.mlp: separation, reproducibility and early stopping."""

import numpy as np
import pytest
import torch

import medfm.heads.mlp as mlp_module
from medfm.heads.mlp import MLPHead
from medfm.metrics.scores import auc


def blobs(rng, n, n_classes=2, d=8):
    y = rng.integers(0, n_classes, n)
    centres = 3.0 * np.eye(n_classes, d)
    X = rng.normal(size=(n, d)) + centres[y]
    return X, np.array(["a", "b", "c"])[y]


MLP_FAST = {"hidden_dim": 32, "max_epochs": 30, "batch_size": 32}


def test_mlp_separates_blobs_and_predicts_in_the_label_space():
    rng = np.random.default_rng(0)
    X, y = blobs(rng, 200, n_classes=3)
    X_te, y_te = blobs(rng, 200, n_classes=3)
    head = MLPHead(**MLP_FAST).fit(X, y)
    proba = head.predict_proba(X_te)
    assert proba.shape == (200, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert auc(y_te, proba, head.classes_) > 0.95
    assert head.score(X_te, y_te) > 0.9
    assert list(head.classes_) == ["a", "b", "c"]
    assert head.n_epochs_ == 30 and head.val_auc_ is None


def test_mlp_is_reproducible_with_the_same_random_state_and_leaves_torch_state_alone():
    X, y = blobs(np.random.default_rng(1), 120)
    X_te, _ = blobs(np.random.default_rng(2), 50)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    first = MLPHead(**MLP_FAST, random_state=3).fit(X, y).predict_proba(X_te)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    again = MLPHead(**MLP_FAST, random_state=3).fit(X, y).predict_proba(X_te)
    other = MLPHead(**MLP_FAST, random_state=4).fit(X, y).predict_proba(X_te)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_mlp_early_stopping_keeps_the_best_validation_epoch(monkeypatch):
    rng = np.random.default_rng(0)
    X, y = blobs(rng, 200, d=8)
    X[:, 1:] += rng.normal(scale=2.0, size=(200, 7))  # noisy, so validation AUC moves
    X_val, y_val = blobs(rng, 100, d=8)
    epochs_run = []
    real_epoch = mlp_module._train_epoch
    monkeypatch.setattr(
        mlp_module, "_train_epoch", lambda *a: (epochs_run.append(1), real_epoch(*a))
    )
    head = MLPHead(**{**MLP_FAST, "max_epochs": 200}, patience=5).fit(X, y, X_val, y_val)
    # stopped `patience` epochs after the best one, and kept the best one's weights
    assert len(epochs_run) == head.n_epochs_ + 5 < 200
    assert auc(y_val, head.predict_proba(X_val), head.classes_) == pytest.approx(head.val_auc_)
    assert head.val_auc_ > 0.95
