"""Tests for medfm.heads.extra: GDA, prototype (TEEN) and MLP heads, scikit-learn API."""

import math

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

import medfm.heads.extra as heads_extra
from medfm.heads.extra import GDAHead, MLPHead, PrototypeHead, teen_calibrate
from medfm.heads.registry import HEADS
from medfm.metrics.scores import auc


def log_odds(head, Z, c=1, ref=0):
    proba = head.predict_proba(Z)
    return np.log(proba[:, c]) - np.log(proba[:, ref])


# ------------------------------------------------------------------- GDA, exact closed form


def gaussian_classes(rng, sizes, means, cov):
    X = np.concatenate(
        [rng.multivariate_normal(m, cov, size=n) for m, n in zip(means, sizes, strict=True)]
    )
    return X, np.repeat(np.arange(len(sizes)), sizes)


COV = np.array([[1.0, 0.6, 0.2], [0.6, 1.0, 0.3], [0.2, 0.3, 0.5]])


@pytest.mark.parametrize("n_classes", [2, 3])
def test_gda_logits_equal_the_closed_form_on_the_same_empirical_moments(n_classes):
    # Unequal class sizes so the log-prior term counts.
    sizes = [150, 100, 50][:n_classes]
    means = [np.zeros(3), np.array([1.0, 0.5, -0.5]), np.array([-1.0, 1.0, 0.0])][:n_classes]
    X, y = gaussian_classes(np.random.default_rng(0), sizes, means, COV)
    alpha = 0.1
    head = GDAHead(shrinkage=alpha).fit(X, y)

    M = np.stack([X[y == c].mean(0) for c in range(n_classes)])  # (k, d)
    R = X - M[y]
    S = R.T @ R / len(X)  # pooled within-class covariance (maximum likelihood)
    Sigma = (1 - alpha) * S + alpha * np.trace(S) / 3 * np.eye(3)
    W = np.linalg.solve(Sigma, M.T).T  # rows Sigma^-1 mu_c
    b = np.log(np.array(sizes) / len(X)) - 0.5 * np.einsum("cd,cd->c", M, W)

    Z = M.mean(0) + np.random.default_rng(1).normal(scale=0.5, size=(8, 3))
    logits = Z @ W.T + b
    for c in range(1, n_classes):
        np.testing.assert_allclose(log_odds(head, Z, c), logits[:, c] - logits[:, 0], rtol=1e-7)
    assert head.shrinkage_ == alpha


def test_gda_recovers_the_population_discriminant_with_many_samples():
    # Equal priors, mu_0 = 0: log-odds(x) = x^T Sigma^-1 mu_1 - 1/2 mu_1^T Sigma^-1 mu_1.
    mu1 = np.array([1.0, 0.5, -0.5])
    X, y = gaussian_classes(np.random.default_rng(2), [20000, 20000], [np.zeros(3), mu1], COV)
    head = GDAHead().fit(X, y)  # Ledoit-Wolf: n >> d, so the shrinkage is tiny
    assert head.shrinkage_ < 1e-3
    w_true = np.linalg.solve(COV, mu1)  # (1.145, 0.305, -1.641)
    origin = log_odds(head, np.zeros((1, 3)))[0]
    w = log_odds(head, 0.5 * np.eye(3)) - origin  # log-odds is linear: slope per unit axis * 0.5
    np.testing.assert_allclose(w / 0.5, w_true, atol=0.03 * np.linalg.norm(w_true))
    assert origin == pytest.approx(-0.5 * mu1 @ w_true, abs=0.03)


# ---------------------------------------------------------------- GDA, choosing the shrinkage


def few_shot(rng, n, d=40):
    # Identity covariance and a mean difference in two of 40 features: with 10 samples per class
    # the pooled covariance is singular, so little shrinkage overfits and a lot is right.
    y = np.repeat([0, 1], n)
    X = rng.normal(size=(2 * n, d))
    X[:, :2] += np.where(y == 1, 1.0, -1.0)[:, None]
    return X, y


def test_gda_without_validation_uses_ledoit_wolf_on_the_pooled_residuals():
    X, y = few_shot(np.random.default_rng(0), 10)
    head = GDAHead().fit(X, y)
    M = np.stack([X[y == c].mean(0) for c in (0, 1)])
    expected = ledoit_wolf_shrinkage(X - M[y], assume_centered=True)
    assert head.shrinkage_ == pytest.approx(expected, rel=1e-12)
    assert head.shrinkage_ > 0.5  # few shots in 40 dimensions: strong shrinkage
    # a single-class validation split cannot be scored, so it is ignored
    assert GDAHead().fit(X, y, X[:3], y[:3]).shrinkage_ == head.shrinkage_


def test_gda_chooses_the_shrinkage_by_validation_auc():
    rng = np.random.default_rng(0)
    X, y = few_shot(rng, 10)
    X_val, y_val = few_shot(rng, 100)
    grid = (0.001, 0.9)
    scores = [auc(y_val, GDAHead(shrinkage=a).fit(X, y).predict_proba(X_val)) for a in grid]
    assert scores[1] > scores[0] + 0.05  # the case really has one best shrinkage
    assert GDAHead(shrinkages=grid).fit(X, y, X_val, y_val).shrinkage_ == 0.9
    assert GDAHead(shrinkages=grid[::-1]).fit(X, y, X_val, y_val).shrinkage_ == 0.9
    # a fixed shrinkage is used as given, validation split or not
    assert GDAHead(shrinkage=0.001, shrinkages=grid).fit(X, y, X_val, y_val).shrinkage_ == 0.001


@pytest.mark.parametrize("bad", [1.5, -0.1, "ledoit"])
def test_gda_rejects_a_shrinkage_outside_0_1(bad):
    X, y = few_shot(np.random.default_rng(0), 5, d=3)
    with pytest.raises(ValueError, match="shrinkage must be 'auto' or a float in"):
        GDAHead(shrinkage=bad).fit(X, y)


# ------------------------------------------------------------------- prototypes, by hand

# Class "a": (1, 0), (3, 0) -> mean (2, 0) -> prototype (1, 0).
# Class "b": (0, 2), (2, 2) -> mean (1, 2) -> prototype (1, 2) / sqrt 5.
X_HAND = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
Y_HAND = np.array(["a", "a", "b", "b"])


def test_prototype_probabilities_match_hand_computed_cosine_softmax():
    head = PrototypeHead(temperature=0.5, center=False).fit(X_HAND, Y_HAND)
    np.testing.assert_allclose(head.prototypes_, [[1, 0], [1 / math.sqrt(5), 2 / math.sqrt(5)]])
    # query (1, 1): cos to "a" = 1/sqrt 2, cos to "b" = 3/sqrt 10; query (2, 0): 1 and 1/sqrt 5
    for query, (cos_a, cos_b) in [
        ([1.0, 1.0], (1 / math.sqrt(2), 3 / math.sqrt(10))),
        ([2.0, 0.0], (1.0, 1 / math.sqrt(5))),
    ]:
        e_a, e_b = math.exp(cos_a / 0.5), math.exp(cos_b / 0.5)
        expected = [[e_a / (e_a + e_b), e_b / (e_a + e_b)]]
        np.testing.assert_allclose(head.predict_proba([query]), expected, rtol=1e-12)
        # the query's length does not matter
        np.testing.assert_allclose(head.predict_proba([np.multiply(query, 7)]), expected)
    assert list(head.classes_) == ["a", "b"]
    assert head.predict([[1.0, 1.0], [2.0, 0.0]]).tolist() == ["b", "a"]
    assert not head.is_novel_.any()


def test_prototype_with_every_class_in_base_classes_is_not_calibrated():
    plain = PrototypeHead(center=False).fit(X_HAND, Y_HAND)
    all_base = PrototypeHead(center=False).fit(X_HAND, Y_HAND, base_classes=["a", "b"])
    np.testing.assert_array_equal(all_base.prototypes_, plain.prototypes_)


# -------------------------------------------------------------------------- TEEN calibration

# Base "a" along e1, base "b" along e2, novel "n" with mean direction (1, 0, 1) / sqrt 2:
# cos(n, a) = 1/sqrt 2, cos(n, b) = 0.
X_TEEN = np.array([[2.0, 0, 0], [4.0, 0, 0], [0, 1.0, 0], [0, 3.0, 0], [1.0, 0, 1.0]])
Y_TEEN = np.array(["a", "a", "b", "b", "n"])


def test_teen_calibration_equals_the_formula_on_a_tiny_case():
    alpha, tau = 0.6, 4.0
    head = PrototypeHead(alpha=alpha, tau=tau, center=False).fit(
        X_TEEN, Y_TEEN, base_classes=["a", "b"]
    )
    assert head.is_novel_.tolist() == [False, False, True]
    p_a, p_b, p_n = np.eye(3)[0], np.eye(3)[1], np.array([1.0, 0, 1.0]) / math.sqrt(2)
    w_a, w_b = math.exp(tau / math.sqrt(2)), math.exp(0.0)
    w_a, w_b = w_a / (w_a + w_b), w_b / (w_a + w_b)
    calibrated = alpha * p_n + (1 - alpha) * (w_a * p_a + w_b * p_b)
    np.testing.assert_allclose(head.prototypes_[2], calibrated / np.linalg.norm(calibrated))
    np.testing.assert_allclose(head.prototypes_[:2], [p_a, p_b])  # base prototypes unchanged
    # the pure function, before renormalisation
    raw = teen_calibrate(np.stack([p_a, p_b, p_n]), head.is_novel_, alpha, tau)
    np.testing.assert_allclose(raw[2], calibrated)


def test_teen_moves_a_novel_prototype_toward_the_similar_base_prototype():
    uncalibrated = PrototypeHead(center=False).fit(X_TEEN, Y_TEEN).prototypes_
    head = PrototypeHead(alpha=0.5, tau=16.0, center=False).fit(
        X_TEEN, Y_TEEN, base_classes=["a", "b"]
    )
    before, after = uncalibrated[2], head.prototypes_[2]
    assert after @ head.prototypes_[0] > before @ uncalibrated[0] + 0.1  # toward "a" (similar)
    assert after @ head.prototypes_[1] < 0.01  # hardly toward "b" (orthogonal)
    # alpha = 1 keeps the novel prototype as it was
    kept = (
        PrototypeHead(alpha=1.0, center=False)
        .fit(X_TEEN, Y_TEEN, base_classes=["a", "b"])
        .prototypes_
    )
    np.testing.assert_allclose(kept, uncalibrated)


def test_prototype_base_classes_must_name_training_labels():
    with pytest.raises(ValueError, match=r"base_classes \['z'\] have no training samples"):
        PrototypeHead(center=False).fit(X_TEEN, Y_TEEN, base_classes=["a", "z"])
    with pytest.raises(ValueError, match="base_classes is empty"):
        PrototypeHead(center=False).fit(X_TEEN, Y_TEEN, base_classes=[])


# ------------------------------------------------------------------------------------- MLP


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
    real_epoch = heads_extra._train_epoch
    monkeypatch.setattr(
        heads_extra, "_train_epoch", lambda *a: (epochs_run.append(1), real_epoch(*a))
    )
    head = MLPHead(**{**MLP_FAST, "max_epochs": 200}, patience=5).fit(X, y, X_val, y_val)
    # stopped `patience` epochs after the best one, and kept the best one's weights
    assert len(epochs_run) == head.n_epochs_ + 5 < 200
    assert auc(y_val, head.predict_proba(X_val), head.classes_) == pytest.approx(head.val_auc_)
    assert head.val_auc_ > 0.95


# -------------------------------------------------------------------------- scikit-learn API

HEAD_CASES = [
    (GDAHead, {"shrinkage": 0.2, "shrinkages": (0.1, 0.5)}, ["shrinkage_", "model_"]),
    (
        PrototypeHead,
        {"temperature": 0.2, "alpha": 0.7, "tau": 8.0, "center": False},
        ["prototypes_", "is_novel_", "mean_"],
    ),
    (MLPHead, {**MLP_FAST, "random_state": 5}, ["scaler_", "model_", "n_epochs_", "val_auc_"]),
]


@pytest.mark.parametrize(("cls", "params", "learned"), HEAD_CASES)
def test_heads_follow_the_scikit_learn_estimator_api(cls, params, learned):
    head = cls(**params)
    assert head.get_params() == {**cls().get_params(), **params}
    assert vars(head) == head.get_params()  # __init__ only stores its arguments
    with pytest.raises(NotFittedError):
        head.predict_proba(np.zeros((2, 8)))

    X, y = blobs(np.random.default_rng(1), 60)
    assert head.fit(X, y) is head
    check_is_fitted(head)
    assert set(vars(head)) - set(head.get_params()) == {*learned, "classes_", "n_features_in_"}
    assert head.n_features_in_ == 8
    with pytest.raises(ValueError, match="features"):
        head.predict_proba(np.zeros((2, 5)))

    copy = clone(head)
    assert type(copy) is cls and copy is not head
    assert copy.get_params() == head.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    first = next(iter(params))
    assert copy.set_params(**{first: params[first] * 2}) is copy
    assert copy.get_params()[first] == params[first] * 2
    assert head.get_params()[first] == params[first]


def test_heads_are_registered_by_name():
    assert HEADS["gda"] is GDAHead
    assert HEADS["prototype"] is PrototypeHead
    assert HEADS["mlp"] is MLPHead


@parametrize_with_checks(
    [GDAHead(), PrototypeHead(), MLPHead(hidden_dim=16, max_epochs=10, batch_size=256, lr=0.05)]
)
def test_heads_pass_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_centred_prototypes_are_unit_class_means_minus_the_training_mean():
    X = np.array([[11.0, 10.0], [13.0, 10.0], [10.0, 12.0], [10.0, 14.0]])
    y = np.array(["a", "a", "b", "b"])
    head = PrototypeHead().fit(X, y)
    # training mean (11, 11.5); class means (12, 10) and (10, 13) -> (1, -1.5) and (-1, 1.5)
    d = np.array([1.0, -1.5]) / np.hypot(1.0, 1.5)
    np.testing.assert_allclose(head.prototypes_, [d, -d], rtol=1e-12)
    # a query at the class-"a" side of the mean goes to "a" although it is closer in angle to "b"
    # before centring
    assert head.predict([[12.5, 10.5]]).tolist() == ["a"]
