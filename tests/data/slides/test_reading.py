"""Tests for medfm.data.slides.reading: recognising slides and reading their pyramid headers.

The slides are those of ``conftest.py``.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from medfm.data.slides.reading import SlideLevel, is_wsi, slide_levels
from medfm.data.sources.readers import UnreadableFileError

tifffile = pytest.importorskip("tifffile", reason='WSI support needs pip install "medfm[wsi]"')


def test_is_wsi_reads_pyramids_and_large_tiffs_from_the_header(tmp_path, slide, subifd_slide):
    wide = tmp_path / "wide.tif"
    tifffile.imwrite(wide, np.zeros((8, 8200), np.uint8))
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.full((64, 48, 3), 200, np.uint8), photometric="rgb")
    png = tmp_path / "small.png"
    Image.new("RGB", (8, 8)).save(png)
    broken_tiff = tmp_path / "broken.tif"
    broken_tiff.write_bytes(b"II*\x00garbage")
    assert is_wsi(slide) and is_wsi(subifd_slide) and is_wsi(wide)
    assert not is_wsi(small) and not is_wsi(png) and not is_wsi(broken_tiff)
    assert is_wsi(tmp_path / "any.svs") and is_wsi(tmp_path / "any.NDPI")  # by suffix


def test_slide_levels_report_pyramid_magnification_and_mpp(slide):
    info = slide_levels(slide)
    assert info.levels == [
        SlideLevel(0, 1024, 768, 1.0),
        SlideLevel(1, 512, 384, 2.0),
        SlideLevel(2, 256, 192, 4.0),
    ]
    assert info.magnification == 20 and info.mpp == 0.5
    assert [info.level_magnification(i) for i in range(3)] == [20, 10, 5]


def test_slide_levels_without_magnification_take_the_users(subifd_slide):
    info = slide_levels(subifd_slide)
    assert [lvl.downsample for lvl in info.levels] == [1.0, 2.0, 4.0]
    assert info.magnification is None
    assert info.mpp == pytest.approx(0.25)
    assert slide_levels(subifd_slide, base_magnification=40).magnification == 40


def test_garbage_svs_raises_unreadable_from_slide_levels(tmp_path):
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"this is not a slide\n" * 100)
    with pytest.raises(UnreadableFileError, match=r"garbage\.svs.*not a readable"):
        slide_levels(garbage)


def test_missing_tifffile_asks_for_the_wsi_extra(monkeypatch, slide):
    monkeypatch.setitem(sys.modules, "tifffile", None)
    with pytest.raises(ImportError, match=r'pip install "medfm\[wsi\]"'):
        is_wsi(slide)
