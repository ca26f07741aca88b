"""Tissue detection on whole-slide images: an Otsu mask of a low-resolution level.

:func:`tissue_mask` finds stained tissue on any small RGB or grey image; :func:`_slide_mask`
computes it on a slide level chosen so each tile still spans :data:`MASK_MIN_TILE_PX` mask
pixels, and :func:`_tissue_fraction` gives a tile's share of tissue from that mask.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from medfm.data.slides.reading import SlideInfo, _LevelReader

if TYPE_CHECKING:
    import tifffile

MASK_MIN_TILE_PX = 8  # the tissue mask resolves each tile into at least 8 x 8 mask pixels
MASK_MAX_SIDE = 2048  # the mask level is subsampled to at most this many pixels a side


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (1979) for values in [0, 1]: the cut maximising between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


def _tissue_signal(image: np.ndarray) -> np.ndarray:
    """HSV saturation of an RGB(A) image, or darkness (1 - grey) of a single-channel one."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return 1.0 - image / 255.0
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, 3|4) image, got shape {image.shape}")
    rgb = image[..., :3]
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)


def _clean(mask: np.ndarray, radius: int) -> np.ndarray:
    """Opening (drops specks), closing (bridges gaps), hole filling.

    The mask is padded by repeating its edge, so tissue cut by the image border is not eroded.
    """
    if radius < 1:
        return ndimage.binary_fill_holes(mask)
    structure = ndimage.generate_binary_structure(2, 1)
    padded = np.pad(mask, radius + 1, mode="edge")
    padded = ndimage.binary_opening(padded, structure, iterations=radius)
    padded = ndimage.binary_closing(padded, structure, iterations=radius)
    inner = padded[radius + 1 : -(radius + 1), radius + 1 : -(radius + 1)]
    return ndimage.binary_fill_holes(inner)


def tissue_mask(
    thumbnail: np.ndarray,
    *,
    median_size: int = 5,
    min_signal: float = 0.05,
    cleanup_radius: int = 2,
) -> np.ndarray:
    """Boolean ``(H, W)`` tissue mask of a low-resolution slide image.

    Method (as in CLAM, Lu et al., Nat. Biomed. Eng. 2021): stained tissue is coloured and glass
    is white or grey, so the tissue signal is the HSV saturation ``(max - min) / max`` of an RGB
    ``(H, W, 3|4)`` uint8 image (for a single-channel ``(H, W)`` image, the inverted grey level
    ``1 - v / 255``), median-filtered over ``median_size`` pixels to quiet JPEG noise. Pixels
    above Otsu's threshold (N. Otsu, 1979) on that signal, and above ``min_signal`` (so a blank
    slide, whose saturation is all noise, yields no tissue), are tissue. Then, with a 4-connected
    cross repeated ``cleanup_radius`` times, a binary opening removes specks of dust, a closing
    bridges small gaps, and holes inside tissue are filled (``scipy.ndimage``). Very pale, loose
    tissue (faint stroma, fat) can fall below the threshold.
    """
    signal = _tissue_signal(thumbnail)
    if signal.size == 0:
        return np.zeros(signal.shape, dtype=bool)
    if median_size > 1:
        signal = ndimage.median_filter(signal, size=median_size, mode="nearest")
    threshold = max(_otsu_threshold(signal), min_signal)
    return _clean(signal > threshold, cleanup_radius)


def _mask_level(info: SlideInfo, footprint_base: float) -> int:
    """Lowest-resolution level on which a tile still spans :data:`MASK_MIN_TILE_PX` pixels."""
    fine = [lvl for lvl in info.levels if footprint_base / lvl.downsample >= MASK_MIN_TILE_PX]
    return max(fine, key=lambda lvl: lvl.downsample).level if fine else 0


def _tissue_fraction(mask: np.ndarray, scale: tuple[float, float], box: tuple) -> float:
    """Mean of ``mask`` over the mask pixels whose centres fall in base-level ``box``.

    ``scale`` is base pixels per mask pixel ``(sx, sy)``; ``box`` is ``(x0, y0, x1, y1)``.
    """
    spans = []
    for axis, (start, stop) in enumerate(((box[0], box[2]), (box[1], box[3]))):
        step, size = scale[axis], mask.shape[1 - axis]
        lo, hi = math.ceil(start / step - 0.5), math.ceil(stop / step - 0.5)
        if hi <= lo:  # tile smaller than a mask pixel: use the pixel under its centre
            lo = int((start + stop) / 2 / step)
            hi = lo + 1
        spans.append((min(max(lo, 0), size), min(max(hi, 0), size)))
    (x0, x1), (y0, y1) = spans
    region = mask[y0:y1, x0:x1]
    return float(region.mean()) if region.size else 0.0


def _slide_mask(
    tif: tifffile.TiffFile, page: tifffile.TiffPage, info: SlideInfo, mask_level: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """Tissue mask of ``mask_level`` and its scale, in level-0 pixels per mask pixel ``(x, y)``."""
    reader = _LevelReader(tif, page, info.path)
    reader.check()
    base, lvl = info.levels[0], info.levels[mask_level]
    step = max(1, math.ceil(max(lvl.width, lvl.height) / MASK_MAX_SIDE))
    image = reader.subsampled(step)
    mask = tissue_mask(image[..., 0] if image.shape[-1] == 1 else image)
    return mask, (step * base.width / lvl.width, step * base.height / lvl.height)
