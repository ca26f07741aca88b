"""Tests for medfm.metrics.bootstrap: units, draws, the percentile interval and the grouped
bootstrap itself."""

import math

import numpy as np
import pytest

from medfm.metrics.bootstrap import (
    draw_unit_counts,
    grouped_bootstrap,
    percentile_interval,
    resampling_units,
)


def test_resampling_units_number_groups_in_sorted_order():
    np.testing.assert_array_equal(resampling_units(4, ["p2", "p1", "p2", "p3"]), [1, 0, 1, 2])
    np.testing.assert_array_equal(resampling_units(3), [0, 1, 2])
    # one sample per group: the samples themselves, in sample order
    np.testing.assert_array_equal(resampling_units(3, ["z", "a", "m"]), [0, 1, 2])
    with pytest.raises(ValueError, match=r"labels \(3\) and groups \(2\) differ in length"):
        resampling_units(3, ["a", "b"])


def test_draw_unit_counts_draw_as_many_units_as_there_are():
    counts = draw_unit_counts(np.random.default_rng(0), 7, 500)
    assert counts.shape == (500, 7)
    np.testing.assert_array_equal(counts.sum(1), 7)
    # each unit is drawn once per replicate on average
    np.testing.assert_allclose(counts.mean(0), 1.0, atol=0.15)
    again = draw_unit_counts(np.random.default_rng(0), 7, 500)
    np.testing.assert_array_equal(counts, again)


def test_percentile_interval_drops_nan_and_does_not_interpolate_towards_infinity():
    assert percentile_interval(np.arange(101.0), alpha=0.1) == (5.0, 95.0)
    assert percentile_interval([np.nan, 1.0, 3.0], alpha=0.5) == (1.5, 2.5)
    lo, hi = percentile_interval([1.0, 2.0, 3.0, math.inf], alpha=0.5)
    assert (lo, hi) == (1.0, 3.0)  # inverted CDF: observed values only
    assert all(math.isnan(v) for v in percentile_interval([np.nan, np.nan]))


def test_grouped_bootstrap_of_a_mean_matches_its_standard_error():
    rng = np.random.default_rng(1)
    x = rng.normal(size=400)
    units = resampling_units(len(x))

    def mean(counts):
        return counts @ x / counts.sum(1)

    lo, hi = grouped_bootstrap(mean, units, n_boot=2000, seed=2)
    half = 1.96 * x.std() / math.sqrt(len(x))
    assert lo < x.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert grouped_bootstrap(mean, units, n_boot=2000, seed=2) == (lo, hi)


def test_grouped_bootstrap_resamples_whole_groups():
    # 20 groups of 10 equal values: as wide as the bootstrap of the 20 group values
    rng = np.random.default_rng(3)
    values = rng.normal(size=20)
    x = np.repeat(values, 10)
    grouped = resampling_units(200, np.repeat(np.arange(20), 10))

    def mean_over(data, units):
        return lambda counts: counts[:, units] @ data / counts.sum(1) / (len(data) // len(values))

    lo_g, hi_g = grouped_bootstrap(mean_over(x, grouped), grouped, n_boot=1000)
    lo_s, hi_s = grouped_bootstrap(mean_over(x, np.arange(200)), np.arange(200), n_boot=1000)
    lo_p, hi_p = grouped_bootstrap(lambda c: c @ values / 20, np.arange(20), n_boot=1000)
    assert hi_g - lo_g > 2 * (hi_s - lo_s)
    assert hi_g - lo_g == pytest.approx(hi_p - lo_p, rel=0.2)


def test_grouped_bootstrap_redraws_or_drops_undefined_replicates():
    units = np.arange(10)

    def first_drawn(counts):  # undefined unless unit 0 was drawn
        return np.where(counts[:, 0] > 0, 1.0, np.nan)

    assert grouped_bootstrap(first_drawn, units, n_boot=200, redraw_undefined=True) == (1.0, 1.0)
    dropped = grouped_bootstrap(lambda c: np.full(len(c), np.nan), units, n_boot=5)
    assert all(math.isnan(v) for v in dropped)  # every replicate undefined: no interval
    # without redrawing, the undefined replicates are dropped and the rest kept
    assert grouped_bootstrap(first_drawn, units, n_boot=200) == (1.0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        grouped_bootstrap(first_drawn, units, alpha=0)
    with pytest.raises(ValueError, match="n_boot"):
        grouped_bootstrap(first_drawn, units, n_boot=2.5)
