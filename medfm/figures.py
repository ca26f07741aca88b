"""Figures people would rather look at than read: the one figure saver and the embedding map.

Every PNG medfm writes goes through :func:`save_figure` (atomic, parent folders made, figure
closed); the robustness card embeds :func:`figure_png` bytes inline. The embedding map is drawn
once, by :func:`embedding_map_figure` (panels: by class, then by center).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medfm.io import atomic_path  # noqa: E402

MAX_LEGEND = 12  # legend entries per panel; further groups are drawn but not listed


def figure_png(fig: plt.Figure, dpi: int = 110) -> bytes:
    """``fig`` as PNG bytes (no software tag, so equal figures give equal bytes); closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (parent folders created), close it."""
    data = figure_png(fig, dpi)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def pca_2d(features: np.ndarray) -> np.ndarray:
    """First two principal components ``(n, 2)`` (numpy SVD; deterministic up to sign)."""
    centered = features - features.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[:2].T


def _scatter_groups(
    ax: plt.Axes, xy: np.ndarray, values: np.ndarray, name: str, palette: str
) -> None:
    """One colour per distinct value of ``values``, at most :data:`MAX_LEGEND` in the legend."""
    groups = sorted(set(values.tolist()), key=str)
    cmap = plt.get_cmap(palette if len(groups) <= 8 else "tab20")
    for i, value in enumerate(groups):
        keep = values == value
        label = str(value) if i < MAX_LEGEND else None
        ax.scatter(xy[keep, 0], xy[keep, 1], s=8, alpha=0.7, color=cmap(i % cmap.N), label=label)
    ax.set_title(f"coloured by {name}", fontsize=10)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_xticks([])
    ax.set_yticks([])
    suffix = f" (+{len(groups) - MAX_LEGEND} more)" if len(groups) > MAX_LEGEND else ""
    ax.legend(fontsize=7, markerscale=1.5, title=f"{name}{suffix}", title_fontsize=7)


def embedding_map_figure(
    points: np.ndarray | Sequence[Sequence[float]],
    bio: Sequence,
    center: Sequence,
    *,
    title: str = "",
) -> plt.Figure:
    """Two scatter plots side by side: the same points coloured by class (left) and by center
    (right). Colours that separate by center rather than by class are the warning sign of an
    encoder that is not robust to medical-center differences (de Jong et al. 2025).

    ``points`` is ``(n, 2)`` map coordinates, or ``(n, d)`` embeddings with ``d > 2`` that are
    projected on their first two principal components (:func:`pca_2d`). ``bio`` and ``center``
    are ``(n,)`` labels. Save with :func:`save_figure` or embed with :func:`figure_png`.
    """
    xy = np.asarray(points, dtype=np.float64)
    bio_arr, center_arr = np.asarray(bio), np.asarray(center)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"points must have shape (n, 2) or (n, d > 2), got {xy.shape}")
    if not len(xy) == len(bio_arr) == len(center_arr):
        raise ValueError(
            f"points ({len(xy)}), bio ({len(bio_arr)}) and center ({len(center_arr)}) "
            "must have the same length"
        )
    if xy.shape[1] > 2:
        xy = pca_2d(xy)
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 4.0), constrained_layout=True)
    _scatter_groups(axes[0], xy, bio_arr.astype(str), "class", "Dark2")
    _scatter_groups(axes[1], xy, center_arr.astype(str), "center", "Set1")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
