"""The robustness card's own figures, each returned as PNG bytes so the card can embed them inline.

Every function takes plain data (mappings, lists, arrays) and returns ``bytes`` of a PNG image
(:func:`medfm.figures.figure_png`); nothing is written to disk. The PNGs carry no "Software"
metadata, so the same data gives the same bytes on the same machine. The embedding map is the
shared :func:`medfm.figures.embedding_map_figure`.

Example:
    >>> png = ri_curve_plot({5: 1.4, 10: 1.2, 20: 1.1}, selected_k=10)
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from medfm.figures import figure_png  # noqa: E402


def _sorted_curve(curve: Mapping) -> tuple[list[int], list[float]]:
    """``{k: value}`` (keys may be strings, as after a JSON round trip) sorted by k."""
    pairs = sorted((int(k), float(v)) for k, v in curve.items())
    return [k for k, _ in pairs], [v for _, v in pairs]


def _finite(values: Sequence[float]) -> list[float]:
    return [v if math.isfinite(v) else np.nan for v in values]


def ri_curve_plot(
    curve: Mapping,
    *,
    normalized: Mapping | None = None,
    selected_k: int | None = None,
    title: str = "",
) -> bytes:
    """The robustness index against the number of neighbours k.

    ``curve`` maps k to the ratio RI (de Jong et al. 2025), drawn with its reference line at 1;
    ``normalized`` (optional) maps k to the normalized RI (PathoROB), drawn in a second panel with
    its neutral line at 0.5. ``selected_k`` is marked with a vertical line. Non-finite values
    (an infinite ratio) are left out of the line.
    """
    panels = [(curve, "RI ratio (same class / same center)", 1.0)]
    if normalized:
        panels.append((normalized, "RI normalized SO / (SO + OS)", 0.5))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels), 3.3), constrained_layout=True, squeeze=False
    )
    for ax, (values, ylabel, reference) in zip(axes[0], panels, strict=True):
        ks, ris = _sorted_curve(values)
        ax.plot(ks, _finite(ris), marker="o", color="tab:blue")
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
        if selected_k is not None:
            ax.axvline(int(selected_k), color="tab:orange", linewidth=1, label=f"k = {selected_k}")
            ax.legend(fontsize=8)
        if ks and max(ks) / max(min(ks), 1) >= 10:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (neighbours)")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return figure_png(fig, dpi=100)


def errors_by_center_plot(
    per_center: Mapping,
    *,
    overall: float | None = None,
    counts: Mapping | None = None,
    ylabel: str = "fraction of errors attributed to center",
    title: str = "",
) -> bytes:
    """One bar per center (``{center: value}``), an optional dashed line at ``overall``, and
    optional ``{center: n}`` counts written above the bars."""
    centers = sorted(per_center, key=str)
    values = [float(per_center[c]) for c in centers]
    fig, ax = plt.subplots(figsize=(max(3.6, 0.7 * len(centers) + 2.0), 3.3), layout="constrained")
    bars = ax.bar([str(c) for c in centers], _finite(values), color="tab:red", alpha=0.75)
    if overall is not None and math.isfinite(float(overall)):
        ax.axhline(float(overall), color="black", linestyle="--", linewidth=1, label="all centers")
        ax.legend(fontsize=8)
    if counts:
        for bar, c in zip(bars, centers, strict=True):
            if c in counts:
                ax.annotate(
                    f"n={counts[c]}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    if all(0.0 <= v <= 1.0 for v in values if math.isfinite(v)):
        ax.set_ylim(0, 1.08)
    ax.set_xlabel("center")
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(axis="x", labelrotation=30 if len(centers) > 4 else 0, labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return figure_png(fig, dpi=100)
