"""Fixtures shared by the tests of medfm.evaluation."""

import pytest


def per_center(auc_a, auc_b):
    """Test AUC and accuracy of two centers, listed out of order."""
    return {
        "center_b": {"test_auc": auc_b, "test_acc": 0.7, "n": 35},
        "center_a": {"test_auc": auc_a, "test_acc": 0.8, "n": 40},
    }


@pytest.fixture
def metrics():
    return {
        "random:linear": {"full": {"test_auc": 0.51, "n_seeds": 3}},
        "linear": {
            "full": {
                "test_auc": 0.8734,
                "test_auc_std": 0.0121,
                "test_auc_ci95": [0.8, 0.91],
                "test_acc": 0.8,
                "test_bacc": 0.79,
                "test_f1": 0.78,
                "test_ece": 0.05,
                "n_seeds": 3,
                "per_center": per_center(0.9, float("nan")),
            },
            "fewshot:1": {"test_auc": 0.6, "test_auc_std": 0.05},
            "fewshot:5": {"test_auc": 0.7, "test_auc_std": 0.03},
            "fraction:0.1": {"test_auc": 0.75},
            "fraction:0.5": {"test_auc": 0.82, "test_auc_std": 0.01},
        },
        "pixels:linear": {"full": {"test_auc": float("nan"), "per_center": per_center(0.6, 0.55)}},
        "knn": {"full": {"test_auc": 0.85, "test_auc_ci95": [0.79, float("nan")]}},
    }
