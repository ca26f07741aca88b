"""Whole-slide images (WSI): :mod:`~medfm.data.slides.reading` (recognise a slide, list its
pyramid, read a level), :mod:`~medfm.data.slides.tissue` (the tissue mask) and
:mod:`~medfm.data.slides.tiling` (cut tissue tiles as PNGs).

Example:
    >>> from medfm.data.slides import tile_slide
    >>> rows = tile_slide("case1.svs", "tiles/case1", magnification=20)  # doctest: +SKIP
"""

from medfm.data.slides.reading import (
    TIFF_SUFFIXES,
    WSI_SUFFIXES,
    SlideInfo,
    SlideLevel,
    is_wsi,
    slide_levels,
)
from medfm.data.slides.tiling import tile_slide
from medfm.data.slides.tissue import tissue_mask

__all__ = [
    "TIFF_SUFFIXES",
    "WSI_SUFFIXES",
    "SlideInfo",
    "SlideLevel",
    "is_wsi",
    "slide_levels",
    "tile_slide",
    "tissue_mask",
]
