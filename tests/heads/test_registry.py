"""Tests for medfm.heads.registry: every head by name, what it trains on, the scikit-learn
estimator API of every feature head, and that the registry itself loads no torch."""

import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from medfm.config import load_config
from medfm.heads.gda import GDAHead
from medfm.heads.knn import KNNHead
from medfm.heads.linear import LinearProbe
from medfm.heads.mlp import MLPHead
from medfm.heads.prototype import PrototypeHead
from medfm.heads.registry import (
    HEADS,
    build_head,
    check_heads,
    feature_heads,
    head_class,
    image_heads,
)


def _blobs(rng, n, shift):
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 5))
    X[:, 0] += np.where(y == 1, shift, -shift)
    return X, np.where(y == 1, "b", "a")


def blobs(rng, n, n_classes=2, d=8):
    y = rng.integers(0, n_classes, n)
    centres = 3.0 * np.eye(n_classes, d)
    X = rng.normal(size=(n, d)) + centres[y]
    return X, np.array(["a", "b", "c"])[y]


MLP_FAST = {"hidden_dim": 32, "max_epochs": 30, "batch_size": 32}


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


# -------------------------------------------------------------------------- scikit-learn API

VALIDATED_CASES = [
    (GDAHead, {"shrinkage": 0.2, "shrinkages": (0.1, 0.5)}, ["shrinkage_", "model_"]),
    (
        PrototypeHead,
        {"temperature": 0.2, "alpha": 0.7, "tau": 8.0, "center": False},
        ["prototypes_", "is_novel_", "mean_"],
    ),
    (MLPHead, {**MLP_FAST, "random_state": 5}, ["scaler_", "model_", "n_epochs_", "val_auc_"]),
]


@pytest.mark.parametrize(("cls", "params", "learned"), VALIDATED_CASES)
def test_validated_heads_follow_the_scikit_learn_estimator_api(cls, params, learned):
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


@parametrize_with_checks(
    [GDAHead(), PrototypeHead(), MLPHead(hidden_dim=16, max_epochs=10, batch_size=256, lr=0.05)]
)
def test_heads_pass_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# ------------------------------------------------------------------------------ the registry


def test_every_head_is_registered_with_what_it_trains_on():
    assert HEADS.names() == [
        "dr_tune",
        "finetune",
        "gda",
        "knn",
        "linear",
        "mlp",
        "prototype",
        "soup",
    ]
    assert feature_heads() == ["gda", "knn", "linear", "mlp", "prototype"]
    assert image_heads() == ["dr_tune", "finetune", "soup"]
    stochastic = [n for n in HEADS.names() if HEADS.get(n).stochastic]
    assert stochastic == ["dr_tune", "finetune", "mlp", "soup"]
    assert all(HEADS.get(n).summary for n in HEADS.names())


def test_build_head_makes_fresh_heads_from_the_eval_config():
    cfg = load_config(None, ["eval.linear_c_grid=[0.5,5.0]", "eval.knn_k_grid=[3,7]"]).eval
    linear = build_head("linear", cfg)
    assert type(linear) is LinearProbe and linear.Cs == (0.5, 5.0)
    assert type(build_head("knn", cfg)) is KNNHead and build_head("knn", cfg).ks == (3, 7)
    assert build_head("mlp", cfg, seed=4).random_state == 4
    expected = {"gda": GDAHead, "prototype": PrototypeHead, "mlp": MLPHead}
    for name, cls in expected.items():
        assert type(build_head(name, cfg)) is cls
    assert build_head("linear", cfg) is not linear
    assert head_class("KNNHead") is KNNHead


def test_unknown_and_image_heads_are_refused_with_the_registered_names():
    cfg = OmegaConf.create({"linear_c_grid": [1.0], "knn_k_grid": [5]})
    with pytest.raises(
        ValueError, match=r"unknown head\(s\) \['svm'\]; choose from dr_tune, finetune, gda"
    ):
        build_head("svm", cfg)
    with pytest.raises(ValueError, match="unknown head"):
        check_heads(["linear", "svm"])
    check_heads(["linear", "soup"])
    with pytest.raises(ValueError, match="image heads fine-tune the encoder"):
        build_head("finetune", cfg)


@pytest.mark.parametrize("name", feature_heads())
def test_every_feature_head_predicts_in_the_original_label_space(name):
    cfg = load_config(None, []).eval
    X, y = _blobs(np.random.default_rng(2), 60, 6.0)
    head = build_head(name, cfg).fit(X, y)
    X_te, y_te = _blobs(np.random.default_rng(3), 30, 6.0)
    assert head.predict(X_te).tolist() == y_te.tolist()
    assert head.score(X_te, y_te) == 1.0  # ClassifierMixin.score = accuracy


def test_the_registry_loads_neither_torch_nor_scikit_learn():
    code = (
        "import sys, medfm.heads.registry as r; r.feature_heads(); "
        "print('torch' in sys.modules, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
