"""The one bootstrap: a (patient-)grouped percentile bootstrap (Efron & Tibshirani 1993).

Each replicate draws, with replacement, as many *units* as there are: single samples, or whole
groups (e.g. patients) when given -- images of one patient are not independent, and resampling
them one by one would give too narrow an interval. A replicate is handed to the statistic as
the multiplicities of the units, ``(B, n_units)`` counts for B replicates at once, so a statistic
that is a weighted sum (neighbour counts, a weighted Mann-Whitney count) costs one matrix product
and no resampled copies of the data.

Used by :func:`medfm.metrics.classification.bootstrap_auc_ci` (test AUC) and
:func:`medfm.robustness.index.bootstrap_ci` (the robustness index, de Jong et al. 2025;
PathoROB, Kömen et al. 2025).

Example:
    >>> units = resampling_units(4, groups=["p1", "p1", "p3", "p2"])
    >>> units.tolist()
    [0, 0, 2, 1]
    >>> lo, hi = grouped_bootstrap(lambda counts: counts @ [1.0, 2.0, 3.0] / 3, units)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

CHUNK_CELLS = 2_000_000  # replicates x samples handed to the statistic at once
MAX_REDRAWS = 100  # rounds of redrawing undefined (NaN) replicates, when asked to


def resampling_units(n: int, groups: Sequence | np.ndarray | None = None) -> np.ndarray:
    """``(n,)`` unit of each sample, numbered ``0..n_units-1``: its group (numbered in sorted
    group order), or the sample itself without ``groups`` or when every group holds one sample
    (then resampling groups is resampling samples, and gives the same replicates).

    Raises:
        ValueError: when ``groups`` is not one label per sample.
    """
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n:
        raise ValueError(
            f"labels ({n}) and groups ({len(groups)}) differ in length; pass one group "
            "(e.g. patient) label per sample"
        )
    units = np.unique(groups, return_inverse=True)[1].reshape(-1)
    return units if n and units.max() + 1 < n else np.arange(n)


def draw_unit_counts(rng: np.random.Generator, n_units: int, size: int) -> np.ndarray:
    """``(size, n_units)`` multiplicities when ``n_units`` units are drawn with replacement,
    ``size`` times."""
    draws = rng.integers(0, n_units, (size, n_units)) + n_units * np.arange(size)[:, None]
    return np.bincount(draws.ravel(), minlength=size * n_units).reshape(size, n_units)


def percentile_interval(stats: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """``(lo, hi)``: the ``alpha / 2`` and ``1 - alpha / 2`` quantiles of the defined replicates.

    NaN replicates are dropped (``(nan, nan)`` when none is left); when some are infinite the
    quantiles are taken without interpolation (``method="inverted_cdf"``), since interpolating
    towards infinity is meaningless.
    """
    stats = np.asarray(stats, dtype=float)
    stats = stats[~np.isnan(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    method = "linear" if np.isfinite(stats).all() else "inverted_cdf"
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2], method=method)
    return float(lo), float(hi)


def check_bootstrap_args(n_boot: int, alpha: float) -> int:
    """``n_boot`` as an int, after checking it is a positive integer and ``alpha`` in (0, 1)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} must lie in (0, 1), e.g. 0.05 for a 95 % interval")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r} must be a positive number of replicates")
    return int(n_boot)


def grouped_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    units: np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    redraw_undefined: bool = False,
) -> tuple[float, float]:
    """``(lo, hi)`` percentile bootstrap confidence interval (95 % by default) of ``statistic``.

    Args:
        statistic: maps unit multiplicities ``(B, n_units)`` to the ``(B,)`` statistic of each
            replicate; NaN marks a replicate where it is undefined (e.g. an AUC of one class).
        units: ``(n,)`` unit per sample, from :func:`resampling_units`; only the number of
            units and the chunk size (``B * n`` at most :data:`CHUNK_CELLS`) depend on it.
        n_boot: number of replicates; ``alpha``: 1 - confidence level; ``seed``: the RNG seed.
        redraw_undefined: redraw NaN replicates, up to :data:`MAX_REDRAWS` rounds, before
            dropping those still undefined (conditioning on a defined statistic, which makes the
            interval slightly optimistic for tiny samples); else drop them at once.
    """
    n_boot = check_bootstrap_args(n_boot, alpha)
    units = np.asarray(units).reshape(-1)
    n_units = int(units.max()) + 1
    rng = np.random.default_rng(seed)
    stats = np.full(n_boot, np.nan)
    todo = np.arange(n_boot)
    chunk = max(1, CHUNK_CELLS // max(len(units), n_units))
    for _ in range(MAX_REDRAWS if redraw_undefined else 1):
        for start in range(0, len(todo), chunk):
            rows = todo[start : start + chunk]
            stats[rows] = statistic(draw_unit_counts(rng, n_units, len(rows)))
        todo = todo[np.isnan(stats[todo])]
        if not len(todo):
            break
    return percentile_interval(stats, alpha)
