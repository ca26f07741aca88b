"""Gain over the random-init twin: a paired bootstrap of the AUC difference."""

import numpy as np
import pytest

from medfm.evaluation.gains import gains_markdown
from medfm.metrics.bootstrap import draw_unit_counts, percentile_interval
from medfm.metrics.classification import bootstrap_auc_gain_ci
from medfm.metrics.scores import auc


def _binary(rng, n, signal):
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))
    return y, np.stack([1 - score, score], axis=1)


def test_gain_ci_is_the_percentile_interval_of_paired_resampled_differences():
    rng = np.random.default_rng(0)
    y, strong = _binary(rng, 80, 1.5)
    weak = 0.5 * strong + 0.5 * rng.dirichlet([1, 1], len(y))  # rows still sum to 1
    got = bootstrap_auc_gain_ci(y, strong, weak, n_boot=200, seed=5)
    # by hand: the same multiplicities, turned into explicit index resamples
    counts = draw_unit_counts(np.random.default_rng(5), len(y), 200)
    diffs = []
    for row in counts:
        idx = np.repeat(np.arange(len(y)), row)
        diffs.append(auc(y[idx], strong[idx]) - auc(y[idx], weak[idx]))
    assert got == pytest.approx(percentile_interval(np.array(diffs)), abs=1e-12)
    assert got[0] < auc(y, strong) - auc(y, weak) < got[1]


def test_same_predictions_have_zero_gain_and_a_clear_winner_a_positive_interval():
    rng = np.random.default_rng(1)
    y, good = _binary(rng, 120, 2.0)
    assert bootstrap_auc_gain_ci(y, good, good, n_boot=100) == (0.0, 0.0)
    noise = rng.dirichlet([1, 1], len(y))
    lo, hi = bootstrap_auc_gain_ci(y, good, noise, n_boot=300)
    assert 0 < lo < hi
    groups = np.repeat(np.arange(40), 3)  # patients: a wider interval than single images
    glo, ghi = bootstrap_auc_gain_ci(y, good, noise, groups=groups, n_boot=300)
    assert ghi - glo > 0


def test_gain_section_of_the_report():
    metrics = {
        "linear": {"full": {"gain_vs_random": 0.031, "gain_vs_random_ci95": [0.002, 0.06]}},
        "random:linear": {"full": {"test_auc": 0.8}},
    }
    lines = gains_markdown(metrics)
    assert lines[1] == "## Gain over random initialisation (full protocol, test AUC)"
    assert lines[-1] == "| linear | +0.031 | [+0.002, +0.060] |"
    assert gains_markdown({"random:linear": {"full": {"test_auc": 0.8}}}) == []
