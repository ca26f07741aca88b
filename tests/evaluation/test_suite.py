"""Tests for medfm.evaluation.suite on feature arrays: loco aggregation over seeds and centers, loco
folds with a single-class or class-missing center, multi-label label fractions."""

import numpy as np
import pytest

from medfm.config import load_config
from medfm.evaluation.protocols import Protocol
from medfm.evaluation.suite import fit_predict, run_protocol
from medfm.evaluation.tasks import EvalTask


def _task(n=120, seed=0, label_of=None):
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for i in range(n):
        center = f"c{i % 3}"
        label = label_of(i, center) if label_of else str((i // 3) % 2)
        rows.append(
            {
                "label": label,
                "center": center,
                "patient": f"p{i}",
                "split": ("train", "train", "val", "test")[(i // 6) % 4],
            }
        )
        feats.append(rng.normal(size=4) + 3.0 * (label == "1"))
    return EvalTask.from_rows(rows), np.array(feats)


def _predict(task, X, head="mlp"):
    cfg = load_config(None, ["eval.bootstrap=20"])
    return lambda fold, seed: fit_predict(head, X, task, fold, cfg, seed)


def test_loco_averages_each_center_over_seeds_then_over_centers():
    task, X = _task()
    metrics, _ = run_protocol(_predict(task, X), task, Protocol("loco"), seeds=2, n_boot=20)
    assert metrics["n_folds"] == 3 and metrics["n_seeds"] == 2
    aucs = [metrics["per_center"][c]["test_auc"] for c in ("c0", "c1", "c2")]
    assert metrics["test_auc"] == pytest.approx(np.mean(aucs))
    assert metrics["test_auc_std"] == pytest.approx(np.std(aucs, ddof=1))
    assert all(metrics["per_center"][c]["n"] == 40 for c in ("c0", "c1", "c2"))


def test_loco_survives_a_single_class_center_and_a_class_only_one_center_has():
    # c2 holds only class "1"; class "2" exists only in c0
    def label_of(i, center):
        if center == "c2":
            return "1"
        return "2" if center == "c0" and i % 4 == 0 else str((i // 3) % 2)

    task, X = _task(label_of=label_of)
    metrics, _ = run_protocol(_predict(task, X, "linear"), task, Protocol("loco"), 1, 20)
    assert np.isnan(metrics["per_center"]["c2"]["test_auc"])
    assert 0.0 <= metrics["per_center"]["c2"]["test_acc"] <= 1.0
    assert np.isfinite(metrics["per_center"]["c0"]["test_auc"])  # "2" never trained on: p = 0
    assert metrics["test_auc"] == pytest.approx(
        np.nanmean([metrics["per_center"][c]["test_auc"] for c in ("c0", "c1")])
    )


def test_multilabel_fraction_scores_an_unseen_label_by_its_prevalence():
    rows = []
    rng = np.random.default_rng(0)
    for i in range(80):
        rare = int(i in (3, 77))  # label 1 positive twice only
        rows.append(
            {
                "label": f"{(i // 4) % 2};{rare}",
                "patient": f"p{i}",
                "split": ("train", "val", "test", "train")[i % 4],
            }
        )
    task = EvalTask.from_rows(rows)
    X = rng.normal(size=(80, 3)) + 2.0 * ((np.arange(80) // 4) % 2)[:, None]
    metrics, _ = run_protocol(_predict(task, X, "linear"), task, Protocol("fraction", 0.2), 2, 20)
    assert task.multilabel and metrics["n_seeds"] == 2
    assert 0.5 < metrics["test_auc"] <= 1.0  # label 0 is learnable; label 1 is skipped or flat
