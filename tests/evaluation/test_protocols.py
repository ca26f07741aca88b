"""Tests for medfm.evaluation.protocols and medfm.evaluation.tasks: protocol parsing,
patient-grouped
few-shot and label-fraction draws, leave-one-center-out folds, aggregation over seeds."""

import numpy as np
import pytest

from medfm.evaluation.protocols import (
    Protocol,
    few_shot,
    label_fraction,
    loco_folds,
    parse_protocols,
    train_subset,
)
from medfm.evaluation.tasks import EvalTask, aggregate


def test_parse_protocols_expands_grids_and_rejoins_command_line_lists():
    names = [p.name for p in parse_protocols("full;fewshot;fraction:0.5;loco")]
    assert names == [
        "full",
        "fewshot:1",
        "fewshot:5",
        "fewshot:10",
        "fewshot:20",
        "fraction:0.5",
        "loco",
    ]
    # OmegaConf splits "[full,fewshot:1,5]" at commas (and makes 5 an int)
    assert [p.name for p in parse_protocols(["full", "fewshot:1", 5])] == [
        "full",
        "fewshot:1",
        "fewshot:5",
    ]
    assert [p.name for p in parse_protocols(["fraction:0.01", "0.1", "full", "full"])] == [
        "fraction:0.01",
        "fraction:0.1",
        "full",
    ]


@pytest.mark.parametrize("bad", ["fewshot:0", "fraction:1.5", "fraction:x", "holdout", "full:3"])
def test_parse_protocols_rejects_bad_specs_with_the_valid_forms(bad):
    with pytest.raises(ValueError, match="protocol"):
        parse_protocols(bad)


def test_resampled_is_true_only_where_seeds_change_the_training_set():
    assert Protocol("fewshot", 5).resampled and Protocol("fraction", 0.1).resampled
    assert not Protocol("fraction", 1.0).resampled and not Protocol("full").resampled


def _patients(n_patients=20, per_patient=3):
    labels = np.repeat(np.arange(n_patients) % 2, per_patient).astype(str)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    return labels, patients


def test_few_shot_takes_k_whole_patients_per_class():
    labels, patients = _patients()
    idx = few_shot(labels, 2, seed=0, patients=patients)
    chosen = np.unique(patients[idx])
    assert len(chosen) == 4 and len(idx) == 12  # 2 patients x 2 classes x 3 images
    for cls in ("0", "1"):
        assert len(np.unique(patients[idx][labels[idx] == cls])) == 2
    # whole patients: every image of a chosen patient is in, no other patient is
    assert set(idx) == set(np.flatnonzero(np.isin(patients, chosen)))
    assert not np.array_equal(idx, few_shot(labels, 2, seed=1, patients=patients))
    np.testing.assert_array_equal(idx, few_shot(labels, 2, seed=0, patients=patients))


def test_few_shot_without_patients_counts_images_and_caps_at_the_class_size():
    labels = np.array(["a"] * 3 + ["b"] * 10)
    idx = few_shot(labels, 5, seed=0)
    assert (labels[idx] == "a").sum() == 3 and (labels[idx] == "b").sum() == 5


def test_label_fraction_is_stratified_by_patient_and_keeps_every_class():
    labels, patients = _patients(n_patients=40)
    idx = label_fraction(labels, 0.25, seed=3, patients=patients)
    chosen = np.unique(patients[idx])
    assert len(chosen) == 10 and len(idx) == 30
    assert set(labels[idx]) == {"0", "1"}
    assert set(idx) == set(np.flatnonzero(np.isin(patients, chosen)))
    tiny = label_fraction(labels, 0.001, seed=0, patients=patients)
    assert set(labels[tiny]) == {"0", "1"} and len(np.unique(patients[tiny])) == 2
    np.testing.assert_array_equal(label_fraction(labels, 1.0, 0), np.arange(len(labels)))


def test_train_subset_dispatches_on_the_protocol():
    labels, patients = _patients()
    np.testing.assert_array_equal(train_subset(labels, Protocol("full"), 0), np.arange(60))
    assert len(train_subset(labels, Protocol("fewshot", 1), 0, patients)) == 6


def test_loco_folds_hold_out_each_center_and_need_two():
    centers = np.array(["x", "y", "x", "z", ""])
    folds = loco_folds(centers)
    assert [c for c, _ in folds] == ["x", "y", "z"]
    np.testing.assert_array_equal(folds[0][1], [True, False, True, False, False])
    with pytest.raises(ValueError, match="at least two centers"):
        loco_folds(np.array(["x", "x"]))


def _rows():
    rows = []
    for i in range(24):
        split = ("train", "train", "val", "test")[i % 4]
        rows.append(
            {
                "label": str((i // 4) % 2),
                "split": split,
                "patient": f"p{i // 2}",
                "center": f"c{i % 3}",
            }
        )
    return rows


def test_task_folds_for_full_fewshot_and_loco():
    task = EvalTask.from_rows(_rows())
    (full,) = task.folds(Protocol("full"), 0)
    np.testing.assert_array_equal(full.train, np.flatnonzero(task.split == "train"))
    np.testing.assert_array_equal(full.val, np.flatnonzero(task.split == "val"))
    np.testing.assert_array_equal(full.test, np.flatnonzero(task.split == "test"))
    (shot,) = task.folds(Protocol("fewshot", 1), 0)
    assert set(task.labels[shot.train]) == {"0", "1"}
    loco = task.folds(Protocol("loco"), 0)
    assert [f.held_out for f in loco] == ["c0", "c1", "c2"]
    for fold in loco:
        assert (task.center[fold.train] != fold.held_out).all()
        assert (task.center[fold.val] != fold.held_out).all() and len(fold.val) == 4
        assert (task.center[fold.test] == fold.held_out).all() and len(fold.test) == 8


def test_task_reports_missing_splits_single_class_tests_and_reads_multilabels():
    rows = _rows()
    with pytest.raises(ValueError, match="'test' split"):
        EvalTask.from_rows([r for r in rows if r["split"] != "test"])
    single = [r | {"label": "1"} if r["split"] == "test" else r for r in rows]
    with pytest.raises(ValueError, match="single class"):
        EvalTask.from_rows(single)
    multi = EvalTask.from_rows([r | {"label": f"{r['label']};1;0"} for r in rows])
    assert multi.multilabel and multi.labels.shape == (24, 3)
    assert multi.labels[:, 1].tolist() == [1] * 24


def test_aggregate_reports_mean_sample_std_and_mean_ci():
    runs = [
        {"test_auc": 0.8, "test_auc_ci95": [0.7, 0.9], "per_center": {"a": 1}},
        {"test_auc": 0.9, "test_auc_ci95": [0.8, 1.0], "per_center": {"a": 2}},
    ]
    out = aggregate(runs)
    assert out["test_auc"] == pytest.approx(0.85)
    assert out["test_auc_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert out["test_auc_ci95"] == pytest.approx([0.75, 0.95])
    assert out["n_seeds"] == 2 and out["per_center"] == {"a": 1}
    assert aggregate(runs[:1])["test_auc_std"] == 0.0
