"""Tests for medfm.evaluation.scoring on feature arrays: loco aggregation over seeds and centers,
loco folds with a single-class or class-missing center, multi-label label fractions, and the
full protocol's report on separable and signal-free features."""

import numpy as np
import pytest

from medfm.config import load_config
from medfm.evaluation.protocols import Protocol
from medfm.evaluation.scoring import fit_predict, run_protocol
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


# ------------------------------------------- the full protocol on blobs (was evaluation.legacy)


def _blob_task(seed, n_per_split=(60, 30, 30), d=16, sep=8.0, splits=("train", "val", "test")):
    """Three well-separated Gaussian classes with string labels, split into train/val/test."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for split, n in zip(("train", "val", "test"), n_per_split, strict=True):
        if split not in splits:
            continue
        for i in range(n):
            label = i % 3
            feats.append(rng.normal(size=d) + sep * np.eye(d)[label])
            rows.append(
                {"label": str(label), "center": f"c{i % 2}", "patient": f"{split}-{i}"}
                | {"split": split}
            )
    return rows, np.array(feats)


def _full(rows, X, head):
    task = EvalTask.from_rows(rows)
    return run_protocol(_predict(task, X, head), task, Protocol("full"), 1, 50)[0]


@pytest.mark.parametrize("head", ["linear", "knn"])
def test_full_protocol_on_separated_blobs_reports_every_metric(head):
    metrics = _full(*_blob_task(0), head)
    assert metrics["test_auc"] == pytest.approx(1.0, abs=1e-3)
    lo, hi = metrics["test_auc_ci95"]
    assert lo <= metrics["test_auc"] <= hi
    assert metrics["test_acc"] >= 0.95 and metrics["test_bacc"] >= 0.95
    assert metrics["test_f1"] >= 0.95 and 0.0 <= metrics["test_ece"] <= 1.0
    assert metrics["n_seeds"] == 1 and metrics["test_auc_std"] == 0.0
    assert set(metrics["per_center"]) == {"c0", "c1"}
    assert sum(c["n"] for c in metrics["per_center"].values()) == 30


@pytest.mark.parametrize("head", ["linear", "knn"])
def test_full_protocol_scores_chance_on_features_without_signal(head):
    # Same table shape, but the features are noise: the test AUC falls far below the blobs' 1.0.
    assert 0.2 < _full(*_blob_task(1, sep=0.0), head)["test_auc"] < 0.8


def test_full_protocol_works_without_a_val_split():
    rows, X = _blob_task(2, splits=("train", "test"))
    assert _full(rows, X, "linear")["test_auc"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("missing", ["test", "train"])
def test_a_task_needs_train_and_test_splits(missing):
    rows, _ = _blob_task(0, splits=tuple(s for s in ("train", "val", "test") if s != missing))
    with pytest.raises(ValueError, match=f"no labelled rows in the '{missing}' split"):
        EvalTask.from_rows(rows)


def test_an_unknown_head_is_refused():
    rows, X = _blob_task(0)
    with pytest.raises(ValueError, match=r"unknown head\(s\) \['svm'\]"):
        _full(rows, X, "svm")
