"""Figures people would rather look at than read: the one figure saver and the embedding map.

Every PNG medfm writes goes through :func:`save_figure` (atomic, parent folders made, figure
closed); the robustness card embeds :func:`figure_png` bytes inline.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medfm.io import atomic_path  # noqa: E402


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


def embedding_map(
    features: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Two PCA scatter plots side by side, coloured by biological class and by center."""
    xy = pca_2d(np.asarray(features, dtype=np.float64))
    bio, center = np.asarray(bio), np.asarray(center)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), constrained_layout=True)
    for ax, values, name in zip(axes, (bio, center), ("class", "center"), strict=True):
        for value in sorted(set(values)):
            keep = values == value
            ax.scatter(xy[keep, 0], xy[keep, 1], s=10, alpha=0.7, label=str(value))
        ax.set_title(f"coloured by {name}")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=7, markerscale=1.5)
    fig.suptitle(title or "Encoder embedding (PCA)")
    return save_figure(fig, path)
