"""Tests for medfm.metrics.classification: balanced accuracy, macro F1, ECE, bootstrap AUC CI
(values, coverage, grouping), multi-label AUC and the classification report."""

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from medfm.metrics.classification import (
    _weighted_auc,
    balanced_accuracy,
    bootstrap_auc_ci,
    classification_report,
    expected_calibration_error,
    f1_macro,
    multilabel_auc,
)
from medfm.metrics.scores import auc


def _binary_proba(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.c_[1 - p1, p1]


def _simulated_binary(rng, n, d):
    """Negatives score N(0, 1), positives N(d, 1): the population AUC is Phi(d / sqrt 2)."""
    y = rng.integers(0, 2, n)
    score = rng.normal(size=n) + d * y
    return y, _binary_proba(1 / (1 + np.exp(-score)))


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


# ----------------------------------------------------------------------------- balanced acc, F1


def test_balanced_accuracy_and_f1_hand_case():
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 1])
    # recall: class 0 3/4, class 1 2/2                                     -> (3/4 + 1) / 2 = 7/8
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(7 / 8)
    # F1 = 2tp / (2tp + fp + fn): class 0 tp 3, fp 0, fn 1 -> 6/7; class 1 tp 2, fp 1, fn 0 -> 4/5
    assert f1_macro(y_true, y_pred) == pytest.approx((6 / 7 + 4 / 5) / 2)
    assert f1_macro(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_a_class_predicted_but_never_true_counts_in_f1_not_in_balanced_accuracy():
    y_true = np.array(["a", "a", "b", "b"])
    y_pred = np.array(["a", "c", "b", "b"])
    # recall: a 1/2, b 2/2; "c" has no true sample, so no recall                    -> 3/4
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(0.75)
    # F1: a tp 1 fn 1 -> 2/3; b -> 1; c tp 0 fp 1 -> 0                               -> 5/9
    assert f1_macro(y_true, y_pred) == pytest.approx(5 / 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that y_pred holds a class not in y_true
        assert balanced_accuracy(y_true, y_pred) == pytest.approx(
            balanced_accuracy_score(y_true, y_pred)
        )
    assert f1_macro(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_balanced_accuracy_of_a_single_class_split_is_its_accuracy():
    assert balanced_accuracy([1, 1, 1, 1], [1, 0, 1, 1]) == pytest.approx(0.75)


@pytest.mark.parametrize("metric", [balanced_accuracy, f1_macro])
def test_label_metrics_reject_length_mismatch_and_empty_input(metric):
    with pytest.raises(ValueError, match=r"labels \(3\) and predictions \(2\) differ in length"):
        metric([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        metric([], [])


# ----------------------------------------------------------------------------- ECE

# Three classes, five samples; top-label confidence, prediction, truth:
#   .40 -> 0, true 0 (right)   .45 -> 1, true 2 (wrong)   .80 -> 1, true 1 (right)
#   .90 -> 2, true 0 (wrong)   .60 -> 0, true 0 (right)
P_ECE = np.array(
    [
        [0.40, 0.30, 0.30],
        [0.20, 0.45, 0.35],
        [0.10, 0.80, 0.10],
        [0.05, 0.05, 0.90],
        [0.60, 0.20, 0.20],
    ]
)
Y_ECE = np.array([0, 2, 1, 0, 0])


def test_ece_two_bins_by_hand():
    # bins (0, .5] and (.5, 1]:
    #   (0, .5]  holds .40, .45: accuracy 1/2, mean confidence .425 -> gap .075, weight 2/5 -> .03
    #   (.5, 1]  holds .80, .90, .60: accuracy 2/3, confidence 2.3/3 -> gap .1, weight 3/5  -> .06
    assert expected_calibration_error(Y_ECE, P_ECE, n_bins=2) == pytest.approx(0.09)


def test_ece_with_one_bin_is_the_gap_between_accuracy_and_mean_confidence():
    # accuracy 3/5, mean confidence (.4 + .45 + .8 + .9 + .6) / 5 = .63
    assert expected_calibration_error(Y_ECE, P_ECE, n_bins=1) == pytest.approx(0.03)


def test_ece_bins_are_closed_on_the_right():
    # confidence .5 belongs to (0, .5]: gaps |1 - .5| and |0 - .9|, each of weight 1/2 -> .7
    # (were .5 put in (.5, 1], one bin of accuracy 1/2 and confidence .7 would give .2)
    proba = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]])
    assert expected_calibration_error([0, 1], proba, n_bins=2) == pytest.approx(0.7)


def test_ece_uses_class_labels_and_is_zero_when_calibrated():
    # each sample of confidence 1 is right; 2 of the 4 samples at confidence .5 are right
    classes = np.array(["neg", "pos"])
    proba = _binary_proba([1.0, 0.0, 0.5, 0.5, 0.5, 0.5])  # argmax ties go to "neg"
    y = np.array(["pos", "neg", "neg", "neg", "pos", "pos"])
    assert expected_calibration_error(y, proba, classes) == pytest.approx(0.0)


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError, match=r"labels \(4\) and predictions \(5\) differ in length"):
        expected_calibration_error(Y_ECE[:4], P_ECE)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(Y_ECE, P_ECE, n_bins=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], np.array([[2.0, -1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="3 columns but classes has 2"):
        expected_calibration_error(Y_ECE, P_ECE, classes=[0, 1])
    with pytest.raises(ValueError, match=r"labels \[7\] are not among classes"):
        expected_calibration_error([0, 7, 1, 1, 0], P_ECE)


# ----------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_weighted_auc_equals_auc_of_the_resampled_indices(n_classes):
    rng = np.random.default_rng(n_classes)
    n = 25
    y = rng.integers(0, n_classes, n)
    proba = rng.multinomial(10, np.ones(n_classes) / n_classes, n) / 10  # many ties
    classes = np.arange(n_classes)
    draws = rng.integers(0, n, (60, n))
    draws[0] = np.flatnonzero(y != y[0])[0]  # a single-class resample -> NaN
    draws[1] = np.r_[np.flatnonzero(y == 0)[:1], np.flatnonzero(y == 1)[:1].repeat(n - 1)]
    weights = np.stack([np.bincount(d, minlength=n) for d in draws])
    got = _weighted_auc(weights, y, proba, classes)
    assert np.isnan(got[0])
    for d, value in zip(draws[1:], got[1:], strict=True):
        if len(np.unique(y[d])) < 2:
            assert np.isnan(value)
        else:  # classes absent from the resample are skipped, as metrics.auc does
            assert value == pytest.approx(auc(y[d], proba[d], classes), abs=1e-12)


def test_bootstrap_ci_contains_the_point_estimate_and_repeats_with_the_seed():
    y, proba = _simulated_binary(np.random.default_rng(0), 300, 1.0)
    lo, hi = bootstrap_auc_ci(y, proba, n_boot=500, seed=3)
    assert lo < auc(y, proba) < hi
    assert 0.02 < hi - lo < 0.2
    assert bootstrap_auc_ci(y, proba, n_boot=500, seed=3) == (lo, hi)
    assert bootstrap_auc_ci(y, proba, n_boot=500, seed=4) != (lo, hi)
    lo90, hi90 = bootstrap_auc_ci(y, proba, n_boot=500, alpha=0.1, seed=3)
    assert lo <= lo90 < hi90 <= hi


def test_bootstrap_ci_of_a_multiclass_auc_contains_the_point_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    proba = rng.dirichlet(np.ones(3), 150) + 0.5 * np.eye(3)[y]
    proba /= proba.sum(axis=1, keepdims=True)
    lo, hi = bootstrap_auc_ci(y, proba, n_boot=300)
    assert lo < auc(y, proba) < hi


def test_bootstrap_ci_covers_the_true_auc_about_95_percent_of_the_time():
    d = 1.0
    true_auc = _phi(d / math.sqrt(2))  # ~0.760
    rng = np.random.default_rng(0)
    runs = 300
    covered = 0
    for run in range(runs):
        y, proba = _simulated_binary(rng, 200, d)
        lo, hi = bootstrap_auc_ci(y, proba, n_boot=200, seed=run)
        covered += lo <= true_auc <= hi
    assert 0.88 <= covered / runs <= 0.99


def _patients(rng, n_patients, per_patient, d=1.0, patient_sd=1.0, image_sd=0.5):
    """Each patient has one label and a random effect shared by its images."""
    label = rng.integers(0, 2, n_patients)
    effect = rng.normal(0, patient_sd, n_patients)
    groups = np.repeat(np.arange(n_patients), per_patient)
    score = d * label[groups] + effect[groups] + rng.normal(0, image_sd, len(groups))
    return label[groups], _binary_proba(1 / (1 + np.exp(-score))), groups


def test_grouped_bootstrap_covers_correlated_images_where_the_sample_bootstrap_fails():
    # image AUC for a positive and a negative image of different patients: Phi(d / sqrt(2 * 1.25))
    true_auc = _phi(1.0 / math.sqrt(2 * 1.25))
    rng = np.random.default_rng(0)
    runs = 150
    grouped = by_sample = 0
    for run in range(runs):
        y, proba, groups = _patients(rng, 40, 5)
        lo, hi = bootstrap_auc_ci(y, proba, groups=groups, n_boot=200, seed=run)
        grouped += lo <= true_auc <= hi
        lo, hi = bootstrap_auc_ci(y, proba, n_boot=200, seed=run)
        by_sample += lo <= true_auc <= hi
    assert 0.88 <= grouped / runs <= 0.99
    assert by_sample / runs < 0.85


def test_grouped_bootstrap_resamples_whole_groups():
    # 20 patients of 10 identical images: the 200 images carry the information of 20 samples,
    # so resampling patients gives a much wider interval than resampling images.
    rng = np.random.default_rng(2)
    label = np.r_[np.zeros(10, int), np.ones(10, int)]
    score = rng.normal(size=20) + label
    groups = np.repeat(np.arange(20), 10)
    y, proba = label[groups], _binary_proba(1 / (1 + np.exp(-score[groups])))
    lo_g, hi_g = bootstrap_auc_ci(y, proba, groups=groups, n_boot=500)
    lo_s, hi_s = bootstrap_auc_ci(y, proba, n_boot=500)
    assert hi_g - lo_g > 2 * (hi_s - lo_s)  # ~sqrt(10) in theory
    # the patient-level data with one image each gives about the same interval as the grouped one
    lo_p, hi_p = bootstrap_auc_ci(label, _binary_proba(1 / (1 + np.exp(-score))), n_boot=500)
    assert hi_g - lo_g == pytest.approx(hi_p - lo_p, rel=0.25)


def test_singleton_groups_give_the_sample_bootstrap():
    y, proba = _simulated_binary(np.random.default_rng(5), 80, 1.0)
    names = np.array([f"patient_{i:03d}" for i in range(80)])[::-1]
    assert bootstrap_auc_ci(y, proba, groups=names, n_boot=200) == bootstrap_auc_ci(
        y, proba, n_boot=200
    )


def test_bootstrap_redraws_single_class_resamples():
    # one positive among 9 negatives: ~35 % of resamples miss it and must be redrawn
    y = np.r_[np.zeros(9, int), 1]
    proba = _binary_proba(np.linspace(0.1, 0.9, 10))
    lo, hi = bootstrap_auc_ci(y, proba, n_boot=400)
    assert np.isfinite([lo, hi]).all()
    assert lo == hi == 1.0  # the positive outranks every negative in every resample


def test_bootstrap_rejects_bad_input():
    y, proba = np.array([0, 1, 1]), _binary_proba([0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match=r"labels \(3\) and predictions \(4\) differ in length"):
        bootstrap_auc_ci(y, _binary_proba([0.2, 0.5, 0.9, 0.1]))
    with pytest.raises(ValueError, match="single class"):
        bootstrap_auc_ci(np.array([1, 1, 1]), proba)
    with pytest.raises(ValueError, match=r"labels \(3\) and groups \(2\) differ in length"):
        bootstrap_auc_ci(y, proba, groups=[0, 1])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_auc_ci(y, proba, alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_auc_ci(y, proba, n_boot=0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_auc_ci(y, _binary_proba([0.2, np.nan, 0.9]))


# ----------------------------------------------------------------------------- multi-label


def test_multilabel_auc_skips_single_class_labels():
    y = np.array([[0, 1, 0], [1, 1, 0], [0, 1, 1], [1, 1, 0]])
    scores = np.array(
        [[0.1, 0.5, 0.2], [0.8, 0.6, 0.1], [0.4, 0.7, 0.3], [0.3, 0.2, 0.9]],
    )
    out = multilabel_auc(y, scores)
    # label 0: positives .8, .3 vs negatives .1, .4: .8 beats both, .3 beats .1 -> 3/4
    # label 1: every sample positive -> undefined, skipped
    # label 2: positive .3 vs negatives .2, .1, .9: beats two -> 2/3
    assert out["per_label"][0] == pytest.approx(0.75)
    assert math.isnan(out["per_label"][1])
    assert out["per_label"][2] == pytest.approx(2 / 3)
    assert out["per_label"][0] == pytest.approx(roc_auc_score(y[:, 0], scores[:, 0]))
    assert out["mean"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert out["skipped"] == [1]


def test_multilabel_auc_rejects_bad_input():
    y = np.array([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"labels \(2, 2\) and scores \(3, 2\)"):
        multilabel_auc(y, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="0/1"):
        multilabel_auc(np.array([[0, 2], [1, 0]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="every label has a single class"):
        multilabel_auc(np.array([[0, 1], [0, 1]]), np.zeros((2, 2)))


# ----------------------------------------------------------------------------- report


def test_classification_report_with_per_center_breakdown():
    rng = np.random.default_rng(7)
    y, proba = _simulated_binary(rng, 120, 1.5)
    centers = np.array(["A"] * 60 + ["B"] * 60)
    y[60:] = 1  # center B holds only positives: its AUC is undefined
    groups = np.repeat(np.arange(40), 3)
    report = classification_report(y, proba, groups=groups, centers=centers, n_boot=200, seed=1)
    y_pred = proba.argmax(axis=1)
    assert report["test_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    lo, hi = report["test_auc_ci95"]
    assert (lo, hi) == bootstrap_auc_ci(y, proba, groups=groups, n_boot=200, seed=1)
    assert lo < report["test_auc"] < hi
    assert report["test_acc"] == pytest.approx(np.mean(y_pred == y))
    assert report["test_bacc"] == pytest.approx(balanced_accuracy_score(y, y_pred))
    assert report["test_f1"] == pytest.approx(f1_score(y, y_pred, average="macro"))
    assert report["test_ece"] == pytest.approx(expected_calibration_error(y, proba))
    assert set(report["per_center"]) == {"A", "B"}
    a, b = report["per_center"]["A"], report["per_center"]["B"]
    assert a["test_auc"] == pytest.approx(roc_auc_score(y[:60], proba[:60, 1]))
    assert a["test_acc"] == pytest.approx(np.mean(y_pred[:60] == y[:60]))
    assert math.isnan(b["test_auc"])
    assert b["test_acc"] == pytest.approx(np.mean(y_pred[60:] == 1))
    assert (a["n"], b["n"]) == (60, 60)


def test_classification_report_without_centers_has_no_breakdown():
    y, proba = _simulated_binary(np.random.default_rng(8), 60, 1.0)
    report = classification_report(y, proba, n_boot=50)
    assert "per_center" not in report
    assert set(report) == {
        "test_auc",
        "test_auc_ci95",
        "test_acc",
        "test_bacc",
        "test_f1",
        "test_ece",
    }


def test_classification_report_rejects_bad_input():
    y, proba = np.array([0, 1, 1]), _binary_proba([0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match=r"labels \(3\) and centers \(2\) differ in length"):
        classification_report(y, proba, centers=["A", "B"], n_boot=10)
    with pytest.raises(ValueError, match="single class"):
        classification_report(np.array([0, 0, 0]), proba, n_boot=10)
    with pytest.raises(ValueError, match=r"labels \(2\) and predictions \(3\) differ in length"):
        classification_report(y[:2], proba, n_boot=10)
