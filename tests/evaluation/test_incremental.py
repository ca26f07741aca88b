"""The class-incremental protocol of medfm.evaluation: parsing, base/novel splits by hand, TEEN
applied by the prototype head, base/novel/harmonic-mean accuracy, and ``medfm evaluate`` on a
tiny 4-class MedMNIST-format file."""

import json

import numpy as np
import pytest
from scipy.special import softmax

from medfm.cli.main import main
from medfm.config import load_config
from medfm.evaluation.protocols import (
    Protocol,
    incremental_subset,
    parse_protocols,
    protocols_of,
)
from medfm.evaluation.scoring import (
    base_novel_accuracy,
    fit_predict,
    harmonic_mean,
    run_protocol,
)
from medfm.evaluation.tasks import EvalTask

# --------------------------------------------------------------------------------- parsing


def test_incremental_specs_parse_from_strings_lists_and_the_command_line():
    (p,) = parse_protocols("incremental:base=a,b")
    assert (p.kind, p.value, p.base) == ("incremental", 5, ("a", "b"))
    assert p.name == "incremental:base=a,b;shots=5" and p.resampled
    # one string joined by ";" (as the command line joins --protocol), shots included
    names = [q.name for q in parse_protocols("full;incremental:base=0,1;shots=2;fewshot:5")]
    assert names == ["full", "incremental:base=0,1;shots=2", "fewshot:5"]
    # an OmegaConf list splits the class names at commas (and makes digits ints)
    assert [q.name for q in parse_protocols(["incremental:base=0", 1, "full"])] == [
        "incremental:base=0,1;shots=5",
        "full",
    ]
    assert parse_protocols(["incremental:base=0.5;shots=3"])[0].base == ("0.5",)
    # eval.protocols=[incremental:base=a,b;shots=2] as OmegaConf reads it
    listed = load_config(None, ["eval.protocols=[incremental:base=a,b;shots=2,full]"])
    assert [q.name for q in protocols_of(listed.eval)] == ["incremental:base=a,b;shots=2", "full"]
    # a name parses back to the same protocol
    assert parse_protocols(p.name) == [p]


@pytest.mark.parametrize(
    "bad",
    [
        "incremental",
        "incremental:",
        "incremental:base=",
        "incremental:a,b",
        "incremental:base=a;shots=0",
        "incremental:base=a;shots=x",
        "incremental:base=a,a",
        "incremental:base=a;way=2",
    ],
)
def test_bad_incremental_specs_are_refused(bad):
    with pytest.raises(ValueError, match="protocol"):
        parse_protocols([bad])


def test_base_classes_by_name_or_by_fraction_of_the_sorted_classes():
    classes = np.array(["a", "b", "c", "d"])
    assert Protocol("incremental", 5, ("c", "a")).base_classes(classes).tolist() == ["a", "c"]
    assert Protocol("incremental", 5, ("0.5",)).base_classes(classes).tolist() == ["a", "b"]
    assert Protocol("incremental", 5, ("0.1",)).base_classes(classes).tolist() == ["a"]
    assert Protocol("incremental", 5, ("0.9",)).base_classes(classes).tolist() == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"base classes \['z'\] are not labels"):
        Protocol("incremental", 5, ("a", "z")).base_classes(classes)
    with pytest.raises(ValueError, match="none is novel"):
        Protocol("incremental", 5, tuple(classes)).base_classes(classes)
    # a class named like a fraction is a class name
    odd = np.array(["0.5", "x"])
    assert Protocol("incremental", 5, ("0.5",)).base_classes(odd).tolist() == ["0.5"]


# ----------------------------------------------------------------------------- the splits


def _rows():
    """Train: classes a, b (base) with 3 patients x 2 images, c, d (novel) with 4 patients x 2
    images; val and test: 2 images of each class."""
    rows = []
    for cls, n_patients in (("a", 3), ("b", 3), ("c", 4), ("d", 4)):
        for p in range(n_patients):
            for _ in range(2):
                rows.append({"label": cls, "split": "train", "patient": f"{cls}{p}"})
        for split in ("val", "test"):
            rows += [{"label": cls, "split": split, "patient": f"{split}-{cls}{i}"} for i in (0, 1)]
    return rows


def test_incremental_fold_keeps_every_base_row_and_k_whole_patients_per_novel_class():
    task = EvalTask.from_rows(_rows())
    protocol = parse_protocols("incremental:base=a,b;shots=2")[0]
    (fold,) = task.folds(protocol, seed=0)
    assert fold.base_classes.tolist() == ["a", "b"]
    train = np.flatnonzero(task.split == "train")
    base_rows = train[np.isin(task.labels[train], ["a", "b"])]
    assert set(base_rows) <= set(fold.train)  # all 12 base rows
    for cls in ("c", "d"):
        mine = fold.train[task.labels[fold.train] == cls]
        chosen = np.unique(task.patient[mine])
        assert len(chosen) == 2 and len(mine) == 4  # 2 patients x 2 images
        everyone = train[np.isin(task.patient[train], chosen)]
        assert set(mine) == set(everyone)  # whole patients
    assert len(fold.train) == 12 + 8
    np.testing.assert_array_equal(fold.val, np.flatnonzero(task.split == "val"))
    np.testing.assert_array_equal(fold.test, np.flatnonzero(task.split == "test"))
    # seeded: the same seed draws the same patients, another seed others
    np.testing.assert_array_equal(fold.train, task.folds(protocol, 0)[0].train)
    draws = {tuple(task.folds(protocol, s)[0].train) for s in range(5)}
    assert len(draws) > 1


def test_incremental_subset_without_patients_counts_images():
    labels = np.array(["a"] * 4 + ["n"] * 6)
    idx = incremental_subset(labels, np.array(["a"]), shots=3, seed=1)
    assert idx[:4].tolist() == [0, 1, 2, 3] and (labels[idx] == "n").sum() == 3
    assert (np.diff(idx) > 0).all()


def test_a_multilabel_task_has_no_incremental_protocol():
    rows = [r | {"label": f"{int(r['label'] in 'ab')};1"} for r in _rows()]
    with pytest.raises(ValueError, match="incremental protocols need single-label"):
        EvalTask.from_rows(rows).folds(Protocol("incremental", 2, ("0.5",)), 0)


# -------------------------------------------------------- TEEN applied, accuracy by group


def _features(task):
    """Hand-made 3-d features: a near e1, b near e2, c between a and e3, d near -e1 - e2."""
    centre = {"a": [4.0, 0, 0], "b": [0, 4.0, 0], "c": [2.0, 0, 2.0], "d": [-2.0, -2.0, 1.0]}
    rng = np.random.default_rng(0)
    return np.array([centre[y] for y in task.labels]) + 0.3 * rng.normal(size=(len(task.labels), 3))


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_the_prototype_head_calibrates_novel_prototypes_with_teen():
    task = EvalTask.from_rows(_rows())
    X = _features(task)
    cfg = load_config(None, [])
    (fold,) = task.folds(parse_protocols("incremental:base=a,b;shots=2")[0], seed=0)
    proba, classes = fit_predict("prototype", X, task, fold, cfg, 0)
    # by hand: centred (CL2N) unit class means; TEEN for c and d with alpha 0.5, tau 16;
    # renormalised; softmax of cosines / temperature 0.1
    X_tr, y_tr = X[fold.train], task.labels[fold.train]
    mean = X_tr.mean(0)
    proto = {c: _unit((X_tr[y_tr == c] - mean).mean(0)) for c in "abcd"}
    base = np.stack([proto["a"], proto["b"]])
    for c in "cd":
        w = softmax(16.0 * base @ proto[c])
        proto[c] = _unit(0.5 * proto[c] + 0.5 * (w[0] * base[0] + w[1] * base[1]))
    P = np.stack([proto[c] for c in "abcd"])
    expected = softmax(_unit(X[fold.test] - mean) @ P.T / 0.1, axis=1)
    assert classes.tolist() == ["a", "b", "c", "d"]
    np.testing.assert_allclose(proba, expected, rtol=1e-10)
    # the full protocol has no base classes: no calibration, other probabilities
    (full,) = task.folds(Protocol("full"), 0)
    assert full.base_classes is None


def test_harmonic_mean_and_base_novel_accuracy_follow_their_formulas():
    assert harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.8 * 0.4 / (0.8 + 0.4))
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(1.0, 0.0) == 0.0
    assert np.isnan(harmonic_mean(float("nan"), 0.5))
    y_true = np.array(["a", "a", "a", "a", "b", "n", "n", "m"])
    y_pred = np.array(["a", "a", "b", "n", "b", "n", "a", "m"])
    got = base_novel_accuracy(y_true, y_pred, ["a", "b"])
    assert got["test_acc_base"] == pytest.approx(3 / 5)  # a, a, b right of a, a, a, a, b
    assert got["test_acc_novel"] == pytest.approx(2 / 3)
    assert got["test_acc_hm"] == pytest.approx(2 * (3 / 5) * (2 / 3) / (3 / 5 + 2 / 3))
    assert np.isnan(base_novel_accuracy(["a"], ["a"], ["a"])["test_acc_novel"])


@pytest.mark.parametrize("head", ["prototype", "linear"])
def test_an_incremental_entry_reports_base_novel_and_harmonic_mean(head):
    task = EvalTask.from_rows(_rows())
    X = _features(task)
    cfg = load_config(None, [])
    protocol = parse_protocols("incremental:base=a,b;shots=1")[0]

    def predict(fold, seed):
        return fit_predict(head, X, task, fold, cfg, seed)

    one, _ = run_protocol(predict, task, protocol, seeds=1, n_boot=20)
    b, n = one["test_acc_base"], one["test_acc_novel"]
    assert one["test_acc_hm"] == pytest.approx(2 * b * n / (b + n))
    y = task.labels[np.flatnonzero(task.split == "test")]
    proba, classes = predict(task.folds(protocol, 0)[0], 0)
    pred = classes[np.argmax(proba, axis=1)]
    assert one["test_acc"] == pytest.approx(np.mean(pred == y))  # over all classes
    assert b == pytest.approx(np.mean((pred == y)[np.isin(y, ["a", "b"])]))
    two, _ = run_protocol(predict, task, protocol, seeds=2, n_boot=20)
    assert two["n_seeds"] == 2 and {"test_acc_hm_std", "test_acc_base_std"} <= set(two)


# ----------------------------------------------------------------------- medfm evaluate


@pytest.mark.slow
def test_evaluate_with_an_incremental_protocol_on_a_four_class_file(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 48), ("val", 16), ("test", 32)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 100, size=(n, 28, 28)).astype(np.uint8)
        for cls in range(4):  # a bright square in the class's own quadrant
            r, c = divmod(cls, 2)
            images[labels == cls, 14 * r + 2 : 14 * r + 12, 14 * c + 2 : 14 * c + 12] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    npz = tmp_path / "four.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--encoder",
            "random:vit_tiny_patch16_224",
            "--data",
            str(npz),
            "--out",
            str(out),
            "--heads",
            "prototype,linear,finetune",
            "--protocol",
            "full",
            "--protocol",
            "incremental:base=0,1;shots=2",
            "--no-tracking",
            "--no-progress",
            "eval.bootstrap=20",
            "model.depth=1",
            "finetune.steps=2",
            "finetune.eval_every=2",
            "finetune.batch_size=16",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    name = "incremental:base=0,1;shots=2"
    assert set(metrics) == {"prototype", "linear", "finetune", "pixels:linear"}
    for row in metrics:
        assert set(metrics[row]) == {"full", name}, row
        entry = metrics[row][name]
        for key in ("test_acc_base", "test_acc_novel", "test_acc_hm", "test_auc", "test_acc"):
            assert 0.0 <= entry[key] <= 1.0, (row, key)
        b, n = entry["test_acc_base"], entry["test_acc_novel"]
        assert entry["test_acc_hm"] == pytest.approx(0 if b + n == 0 else 2 * b * n / (b + n))
        assert "test_acc_base" not in metrics[row]["full"]
    assert metrics["prototype"][name]["n_seeds"] == 1
    report = (out / "metrics.md").read_text()
    assert "## Class-incremental (test accuracy)" in report
    entry = metrics["prototype"][name]
    cells = [f"{entry[k]:.3f}" for k in ("test_acc_base", "test_acc_novel", "test_acc_hm")]
    assert f"| prototype | {name} | {' | '.join(cells)} |" in report
    assert any(
        p.name.startswith("incremental_base=0,1_shots=2-all-seed0-")
        for p in (out / "finetune").iterdir()
    )
