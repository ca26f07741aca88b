"""What ``medfm curate`` writes: kept slices as files, the reduced manifest's rows, the figures.

Kept slices of a volume become 2D files under ``OUT/slices/<volume id>/``, named by the volume's
pseudonymous id and the slice index (``<id>-z0007``): a 2D NIfTI with the in-plane spacing for one
channel, a channel-first ``.npy`` array for several (``multi_window``), each holding the slice as
the recipe's preprocessing left it. Their rows copy the volume's row (patient, center, label,
split, ...) with their own ``id``, ``path``, ``format``, ``shape`` and ``spacing``, so
``medfm pretrain`` takes the reduced manifest unchanged, as 2D images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from medfm.figures import save_figure  # selects the Agg backend, as for every medfm figure

SLICES = "slices"


def _in_plane_spacing(row: Mapping[str, str]) -> list[float]:
    """The last two spacings of a row's ``spacing`` column (``1x1x2.5``), 1 mm when unknown."""
    try:
        values = [float(v) for v in str(row.get("spacing") or "").split("x") if v]
    except ValueError:
        values = []
    return (values[-3:-1] if len(values) >= 3 else values[-2:]) or [1.0, 1.0]


def write_slice(unit: np.ndarray, row: Mapping[str, str], index: int, out_dir: Path) -> dict:
    """Write one kept ``(C, H, W)`` slice of a volume row; its manifest row."""
    import nibabel as nib

    slice_id = f"{row['id']}-z{index:04d}"
    folder = out_dir / SLICES / str(row["id"])
    folder.mkdir(parents=True, exist_ok=True)
    if unit.shape[0] == 1:
        path, fmt = folder / f"{slice_id}.nii.gz", "nifti"
        affine = np.diag([*_in_plane_spacing(row), 1.0, 1.0])
        nib.save(nib.Nifti1Image(np.ascontiguousarray(unit[0], np.float32), affine), path)
    else:
        path, fmt = folder / f"{slice_id}.npy", "npy"
        np.save(path, np.ascontiguousarray(unit, np.float32))
    shape = "x".join(map(str, unit.shape[1:])) + (f"x{unit.shape[0]}" if unit.shape[0] > 1 else "")
    return dict(row) | {
        "id": slice_id,
        "path": str(path.relative_to(out_dir)),
        "format": fmt,
        "shape": shape,
        "spacing": "x".join(f"{s:g}" for s in _in_plane_spacing(row)),
    }


def plot_kept_fraction(report: Mapping, path: Path) -> Path:
    """Kept fraction per center (bars) and the spread of the per-volume kept fraction."""
    centers = report["per_center"]
    fractions = [v["kept"] / max(v["seen"], 1) for v in report["per_volume"].values()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(centers) or ["all"]
    left.bar(names, [centers[c]["kept"] / max(centers[c]["seen"], 1) for c in centers] or [0])
    left.axhline(report["kept_fraction"], color="k", linestyle="--", label="all units")
    left.set(ylim=(0, 1.05), ylabel="kept fraction", title="per center")
    left.legend(loc="lower right")
    left.tick_params(axis="x", rotation=30)
    right.hist(fractions, bins=20, range=(0, 1), color="tab:green")
    right.set(xlabel="kept fraction", ylabel="volumes / groups", title="per volume")
    fig.suptitle(f"{report['method']} (threshold {report['threshold']}, {report['scope']} scope)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pairs(pairs: Sequence[tuple[str, np.ndarray, str, np.ndarray]], path: Path) -> Path:
    """Each dropped unit beside the kept unit it was judged redundant with (ids only)."""
    fig, axes = plt.subplots(2, max(len(pairs), 1), figsize=(2.4 * max(len(pairs), 1), 5.2))
    axes = np.asarray(axes).reshape(2, -1)
    for column, (kept_id, kept, dropped_id, dropped) in enumerate(pairs):
        for ax, image, label in (
            (axes[0, column], kept, "kept"),
            (axes[1, column], dropped, "dropped"),
        ):
            ax.imshow(image, cmap="gray")
            ax.set_title(f"{label}\n{kept_id if label == 'kept' else dropped_id}", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("dropped units (bottom) and the kept unit each repeats (top)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep(table: Mapping[str, Mapping[float, float]], path: Path) -> Path:
    """Kept fraction against the threshold, one panel per method (their scales differ)."""
    fig, axes = plt.subplots(1, len(table), figsize=(3.4 * len(table), 3.2), squeeze=False)
    for ax, (method, curve) in zip(axes[0], table.items(), strict=True):
        thresholds = sorted(curve)
        ax.plot(thresholds, [curve[t] for t in thresholds], marker="o")
        ax.set(title=method, xlabel="threshold", ylabel="kept fraction", ylim=(0, 1.05))
    fig.tight_layout()
    return save_figure(fig, path)
