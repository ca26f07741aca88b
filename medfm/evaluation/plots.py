"""Figures for the downstream-evaluation report of ``medfm evaluate``.

Three PNG figures, each written to ``path`` by :func:`medfm.figures.save_figure` (atomic, parent
folders created) and returned as a ``Path``:

* :func:`roc_curves` -- one ROC curve per head (macro one-vs-rest for more than two classes);
* :func:`per_center_bars` -- test AUC per acquisition center, one bar per head;
* :func:`label_efficiency_curves` -- test AUC against shots per class and fraction of labels.

The metrics mapping is shaped ``{row: {protocol: {"test_auc": ..., "per_center": {...}}}}``,
where a row is a head ("linear", "knn") or a baseline ("random:linear", "pixels:linear") and a
protocol is "full", "fewshot:K" or "fraction:F".
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from medfm.figures import save_figure  # noqa: E402

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]
Curve = tuple[np.ndarray, np.ndarray, float]


def _num(value: object) -> float:
    """``value`` as a float; ``None`` or anything non-numeric becomes NaN."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _upper_envelope(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep one point per distinct FPR, the highest TPR (the top of each vertical segment)."""
    last_of_run = np.r_[fpr[1:] != fpr[:-1], True]
    return fpr[last_of_run], tpr[last_of_run]


def _macro_roc(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> Curve:
    """Macro-average one-vs-rest ROC over the classes present in ``y_true``.

    Each class's TPR is interpolated on a common FPR grid (the union of the classes' FPRs and 201
    evenly spaced points) and averaged; the curve starts at (0, 0). The AUC is the mean of the
    per-class one-vs-rest AUCs, as ``roc_auc_score(multi_class="ovr", average="macro")``. A class
    is present when ``y_true`` has both positives and negatives for it.

    Returns:
        ``(fpr_grid, mean_tpr, auc)``; empty arrays and NaN when no class is present.
    """
    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=np.float64)
    curves, aucs = [], []
    for column, cls in enumerate(classes):
        positive = y_true == cls
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, proba[:, column])
        curves.append(_upper_envelope(fpr, tpr))
        aucs.append(roc_auc_score(positive, proba[:, column]))
    if not curves:
        return np.empty(0), np.empty(0), math.nan
    grid = np.unique(np.concatenate([np.linspace(0.0, 1.0, 201), *(f for f, _ in curves)]))
    mean_tpr = np.mean([np.interp(grid, f, t) for f, t in curves], axis=0)
    return np.r_[0.0, grid], np.r_[0.0, mean_tpr], float(np.mean(aucs))


def _binary_roc(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> Curve:
    """ROC of ``proba[:, 1]`` with ``classes[1]`` positive; empty and NaN if one class only."""
    positive = np.asarray(y_true) == classes[1]
    if positive.all() or not positive.any():
        return np.empty(0), np.empty(0), math.nan
    score = np.asarray(proba, dtype=np.float64)[:, 1]
    fpr, tpr, _ = roc_curve(positive, score)
    return fpr, tpr, float(roc_auc_score(positive, score))


def _row_roc(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> Curve:
    """Binary ROC for two classes, macro one-vs-rest ROC for more."""
    classes = np.asarray(classes)
    if len(classes) == 2:
        return _binary_roc(y_true, proba, classes)
    return _macro_roc(y_true, proba, classes)


def roc_curves(
    predictions: Mapping[str, Prediction], path: str | os.PathLike, title: str = ""
) -> Path:
    """ROC curves of several heads on one axis, each labelled with its test AUC.

    ``predictions`` maps a row name to ``(y_true (n,), proba (n, n_classes), classes)``. Binary
    tasks use ``proba[:, 1]`` with ``classes[1]`` positive; more classes use the macro-average
    one-vs-rest ROC. A row whose AUC is undefined (one class only) is listed as "n/a".
    """
    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for name, (y_true, proba, classes) in predictions.items():
        fpr, tpr, auc = _row_roc(y_true, proba, classes)
        if len(fpr):
            ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
        else:
            ax.plot([], [], label=f"{name} (AUC n/a)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "ROC on the test split")
    return save_figure(fig, path)


def _per_center(metrics: Mapping[str, Mapping[str, Mapping]], protocol: str) -> dict[str, Mapping]:
    """``{row: per_center}`` for the rows that report per-center metrics under ``protocol``."""
    out = {}
    for row, protocols in metrics.items():
        entry = protocols.get(protocol) if isinstance(protocols, Mapping) else None
        if isinstance(entry, Mapping) and entry.get("per_center"):
            out[row] = entry["per_center"]
    return out


def _center_labels(per_center: Mapping[str, Mapping], centers: list[str]) -> list[str]:
    """Tick labels "center\\n(n=40)", n taken from the first row that reports the center."""
    labels = []
    for center in centers:
        n = next((pc[center].get("n") for pc in per_center.values() if center in pc), None)
        labels.append(f"{center}\n(n={n})" if n is not None else center)
    return labels


def per_center_bars(
    metrics: Mapping[str, Mapping[str, Mapping]],
    protocol: str,
    path: str | os.PathLike,
    title: str = "",
) -> Path | None:
    """Grouped bars of per-center test AUC under ``protocol``: centers on x, one bar per row.

    A NaN or missing AUC gets no bar and a small "n/a". Returns ``None`` and writes nothing when no
    row reports per-center metrics for ``protocol``.
    """
    per_center = _per_center(metrics, protocol)
    if not per_center:
        return None
    centers = sorted({str(c) for pc in per_center.values() for c in pc})
    x, width = np.arange(len(centers)), 0.8 / len(per_center)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(centers) + 2), 4), constrained_layout=True)
    for i, (row, pc) in enumerate(per_center.items()):
        offsets = x - 0.4 + width * (i + 0.5)
        aucs = np.array([_num(pc.get(c, {}).get("test_auc")) for c in centers])
        finite = np.isfinite(aucs)
        ax.bar(offsets[finite], aucs[finite], width=width, label=row)
        for pos in offsets[~finite]:
            ax.text(pos, 0.02, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.axhline(0.5, linestyle="--", color="grey", linewidth=1)
    ax.set_xticks(x, _center_labels(per_center, centers), fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=8)
    ax.set_title(title or f"Test AUC per center ({protocol})")
    return save_figure(fig, path)


def _parse_protocol(name: str) -> tuple[str, float] | None:
    """``"fewshot:5"`` -> ``("fewshot", 5)``, ``"fraction:0.1"`` -> ``("fraction", 0.1)``."""
    kind, _, value = str(name).partition(":")
    try:
        if kind == "fewshot":
            return kind, int(value)
        if kind == "fraction":
            return kind, float(value)
    except ValueError:
        pass
    return None


def _efficiency_points(metrics: Mapping[str, Mapping[str, Mapping]]) -> dict[str, dict]:
    """``{kind: {row: [(x, auc, std), ...] sorted by x}}`` for kind "fewshot" and "fraction"."""
    points: dict[str, dict[str, list]] = {"fewshot": {}, "fraction": {}}
    for row, protocols in metrics.items():
        if not isinstance(protocols, Mapping):
            continue
        for protocol, entry in protocols.items():
            parsed = _parse_protocol(protocol)
            if parsed is None or not isinstance(entry, Mapping):
                continue
            std = _num(entry.get("test_auc_std", 0.0))
            point = (parsed[1], _num(entry.get("test_auc")), std if math.isfinite(std) else 0.0)
            points[parsed[0]].setdefault(row, []).append(point)
    return {kind: {r: sorted(p) for r, p in rows.items()} for kind, rows in points.items() if rows}


def _data_ticks(ax: plt.Axes, scale: str, values: list[float]) -> None:
    """Set the x scale and put the ticks at the measured values ("1", "5", "0.1"), no minor ones."""
    ax.set_xscale(scale)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(values, [f"{v:g}" for v in values])


_PANELS = {"fewshot": ("shots per class", "linear"), "fraction": ("fraction of labels", "log")}


def label_efficiency_curves(
    metrics: Mapping[str, Mapping[str, Mapping]], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Test AUC (mean over seeds, error bars = std) against the amount of labelled data.

    Left panel: "fewshot:K" protocols against K shots per class; right panel: "fraction:F"
    protocols against F on a log axis. One line per row; only panels with data are drawn.
    Returns ``None`` and writes nothing when no row has a fewshot or fraction protocol.
    """
    points = _efficiency_points(metrics)
    if not points:
        return None
    fig, axes = plt.subplots(
        1, len(points), figsize=(5 * len(points), 4), squeeze=False, constrained_layout=True
    )
    colors = {row: f"C{i % 10}" for i, row in enumerate(metrics)}  # same colour in both panels
    for ax, (kind, rows) in zip(axes[0], points.items(), strict=True):
        xlabel, scale = _PANELS[kind]
        for row, pts in rows.items():
            xs, aucs, stds = zip(*pts, strict=True)
            ax.errorbar(xs, aucs, yerr=stds, marker="o", capsize=3, label=row, color=colors[row])
        _data_ticks(ax, scale, sorted({x for pts in rows.values() for x, _, _ in pts}))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test AUC")
        ax.legend(fontsize=8)
    fig.suptitle(title or "Label efficiency")
    return save_figure(fig, path)
