"""Tests for medfm.evaluation.plots: the ROC, per-center and label-efficiency figures of
`medfm evaluate`."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medfm.evaluation.plots import (
    _macro_roc,
    label_efficiency_curves,
    per_center_bars,
    roc_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = plt.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


def binary_predictions(n=80, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(["benign", "malignant"])[rng.integers(0, 2, n)]
    p1 = np.clip((y == "malignant") * 0.3 + rng.uniform(0, 0.7, n), 0, 1)
    return y, np.c_[1 - p1, p1], np.array(["benign", "malignant"])


def multiclass_predictions(n=90, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba, np.arange(3)


def test_roc_curves_writes_png_for_binary_and_multiclass_rows(tmp_path):
    single_class = (np.zeros(10), np.full((10, 2), 0.5), np.array([0, 1]))
    predictions = {
        "linear": binary_predictions(),
        "knn": binary_predictions(seed=2),
        "mlp": multiclass_predictions(),
        "degenerate": single_class,
    }
    path = roc_curves(predictions, tmp_path / "figs" / "roc.png", title="ROC")
    assert path == tmp_path / "figs" / "roc.png"
    assert_png(path)


def test_macro_roc_auc_matches_sklearn_ovr_macro():
    y, proba, classes = multiclass_predictions()
    fpr, tpr, auc = _macro_roc(y, proba, classes)
    expected = roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes)
    assert auc == pytest.approx(expected, abs=1e-9)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == pytest.approx(1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= -1e-12)


def test_macro_roc_of_a_perfect_classifier_passes_through_top_left():
    y = np.repeat(np.arange(3), 5)
    fpr, tpr, auc = _macro_roc(y, np.eye(3)[y], np.arange(3))
    assert auc == 1.0
    assert np.any((fpr == 0) & np.isclose(tpr, 1))


def test_macro_roc_skips_absent_classes_and_handles_none_present():
    y, proba, _ = multiclass_predictions()
    keep = y != 2
    _, _, auc = _macro_roc(y[keep], proba[keep], np.arange(3))
    per_class = [roc_auc_score(y[keep] == c, proba[keep, c]) for c in (0, 1)]
    assert auc == pytest.approx(np.mean(per_class), abs=1e-12)
    fpr, tpr, auc = _macro_roc(np.zeros(4), np.full((4, 3), 1 / 3), np.arange(3))
    assert len(fpr) == len(tpr) == 0 and math.isnan(auc)


def test_per_center_bars_writes_png_with_nan_center(tmp_path, metrics):
    path = per_center_bars(metrics, "full", tmp_path / "centers.png")
    assert path == tmp_path / "centers.png"
    assert_png(path)


def test_per_center_bars_returns_none_without_per_center_data(tmp_path, metrics):
    assert per_center_bars(metrics, "fewshot:5", tmp_path / "a.png") is None
    assert per_center_bars(metrics, "no-such-protocol", tmp_path / "b.png") is None
    assert not list(tmp_path.iterdir())


def test_label_efficiency_curves_writes_png(tmp_path, metrics):
    assert_png(label_efficiency_curves(metrics, tmp_path / "eff.png", title="efficiency"))
    only_fraction = {"linear": {"fraction:0.1": {"test_auc": 0.7}, "fraction:1.0": {}}}
    assert_png(label_efficiency_curves(only_fraction, tmp_path / "fraction.png"))


def test_label_efficiency_curves_returns_none_without_label_protocols(tmp_path):
    metrics = {"linear": {"full": {"test_auc": 0.8}}, "knn": {"fewshot:x": {"test_auc": 0.7}}}
    assert label_efficiency_curves(metrics, tmp_path / "eff.png") is None
    assert not (tmp_path / "eff.png").exists()
