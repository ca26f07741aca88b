"""Tests for medfm.data.slides.tissue: the tissue mask of the ``conftest.py`` slides."""

from __future__ import annotations

import numpy as np
import pytest

from medfm.data.slides.tissue import tissue_mask

tifffile = pytest.importorskip("tifffile", reason='WSI support needs pip install "medfm[wsi]"')


def test_geometry_leaves_no_tile_near_the_threshold(tile_fractions):
    fractions = tile_fractions.values()
    assert all(f >= 0.85 or f <= 0.2 for f in fractions)
    assert sum(f >= 0.5 for f in fractions) == 4


def test_tissue_mask_marks_the_blob_and_not_the_glass(levels, tissue):
    mask = tissue_mask(levels[2])
    truth = tissue[::4, ::4]
    assert mask.shape == truth.shape and mask.dtype == bool
    assert abs(mask.mean() - truth.mean()) < 0.02
    assert (mask & truth).sum() / (mask | truth).sum() > 0.95  # intersection over union
    assert not mask[700 // 4, 80 // 4]  # dust removed
    assert not mask[:4, :40].any() and not mask[-4:, :100].any()


def test_tissue_mask_of_blank_glass_is_empty_and_grey_slides_work(tissue):
    glass = np.random.default_rng(1).integers(236, 252, size=(96, 128, 3)).astype(np.uint8)
    assert not tissue_mask(glass).any()
    grey = np.where(tissue[::4, ::4], 120, 245).astype(np.uint8)
    assert (tissue_mask(grey) == tissue[::4, ::4]).mean() > 0.98
