"""Tests for medfm.heads.gda: the closed form, Ledoit-Wolf and validation-chosen shrinkage."""

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf_shrinkage

from medfm.heads.gda import GDAHead
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
