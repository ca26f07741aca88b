"""Reading whole-slide images (WSI): recognise them, list their pyramid, read a level's pixels.

Slides are read with ``tifffile`` (the optional ``[wsi]`` extra, plus ``imagecodecs`` for JPEG
tiles), which covers the TIFF-based formats: Aperio ``.svs``, Hamamatsu ``.ndpi``, Leica ``.scn``,
Ventana ``.bif`` and pyramidal (OME-)TIFF. Only headers are parsed up front; pixels are read one
stored tile (or strip) at a time (:class:`_LevelReader`), so a read never costs more than the
stored segments it overlaps and the base level is never loaded whole.

Coordinates are ``(x, y)`` = (column, row) in base-level (level 0) pixels, as in OpenSlide.
Magnification is the objective power ("20x"); a level's magnification is the base
magnification divided by the level's downsample.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from medfm.data.sources.readers import UnreadableFileError

if TYPE_CHECKING:
    import tifffile

WSI_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif")
TIFF_SUFFIXES = (".tif", ".tiff")
LARGE_SIDE = 8192  # a single-level TIFF wider or taller than this is treated as a slide
SEGMENT_CACHE_BYTES = 64 * 2**20  # decoded tiles kept for reuse by neighbouring reads
BLANK_VALUE = 255  # segments absent from the file are blank glass
_NATIVE_COMPRESSIONS = {1, 8, 32946}  # none, deflate: decoded without imagecodecs
_APERIO_FIELD = r"\|\s*{}\s*=\s*([0-9.]+)"
_NDPI_MAGNIFICATION_TAG = 65421
_CM, _INCH = 3, 2  # TIFF ResolutionUnit values


class SlideLevel(NamedTuple):
    """One pyramid level: its index, size in pixels and downsample relative to level 0."""

    level: int
    width: int
    height: int
    downsample: float


@dataclasses.dataclass(frozen=True)
class SlideInfo:
    """A slide's pyramid and, where known, its base magnification and microns per pixel."""

    path: Path
    levels: list[SlideLevel]
    magnification: float | None
    mpp: float | None

    def level_magnification(self, level: int) -> float | None:
        """Objective power of ``level``, or ``None`` when the base magnification is unknown."""
        if self.magnification is None:
            return None
        return self.magnification / self.levels[level].downsample


def _tifffile() -> Any:
    try:
        import tifffile
    except ImportError as err:
        raise ImportError(
            'Whole-slide images need the tifffile package: pip install "medfm[wsi]"'
        ) from err
    # tifffile's own warnings name the file (often after the patient); medfm reports the same
    # problems itself, by the file's pseudonymous id (quarantine.csv), so they are silenced.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL + 1)
    return tifffile


def is_wsi(path: str | os.PathLike) -> bool:
    """True for a whole-slide image, False for an ordinary image; reads the TIFF header only.

    ``.svs``, ``.ndpi``, ``.scn`` and ``.bif`` count by their suffix (a broken one then fails
    in :func:`slide_levels` / :func:`tile_slide` with the reason). A ``.tif``/``.tiff`` counts when
    tifffile finds a pyramid (more than one resolution level) or a side longer than
    :data:`LARGE_SIDE` pixels; an unreadable TIFF is not a slide.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in WSI_SUFFIXES:
        return True
    if suffix not in TIFF_SUFFIXES:
        return False
    tifffile = _tifffile()
    try:
        with tifffile.TiffFile(path) as tif:
            return _is_pyramid_or_large(_level_pages(tif))
    except Exception:  # not a TIFF, truncated, empty: an ordinary reader will report it
        return False


def _is_pyramid_or_large(pages: list[tifffile.TiffPage]) -> bool:
    return len(pages) > 1 or max(pages[0].imagewidth, pages[0].imagelength) > LARGE_SIDE


def _not_a_slide(path: Path) -> ValueError:
    return ValueError(
        f"{path.name} is not a whole-slide image (not .svs/.ndpi/.scn/.bif, nor a pyramidal or "
        f"larger than {LARGE_SIDE} px TIFF); ingest it as an ordinary image instead"
    )


def _level_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """First page of each pyramid level of the slide, largest first.

    The slide is the series with the largest base image, so thumbnails, labels and macro
    photographs stored beside it (as in SVS and SCN files) are left out.
    """
    main = max(tif.series, key=lambda s: s.keyframe.imagewidth * s.keyframe.imagelength)
    pages = [level.keyframe for level in main.levels]
    return sorted(pages, key=lambda p: p.imagewidth * p.imagelength, reverse=True)


def _unreadable(path: Path, err: Exception) -> UnreadableFileError:
    return UnreadableFileError(
        f"{path.name}: not a readable TIFF-based whole-slide image ({type(err).__name__}: "
        f"{err}); check the file is complete (re-copy or re-export it from the scanner "
        "software) or remove it from the source folder"
    )


def _open_slide(path: Path) -> tuple[tifffile.TiffFile, list[tifffile.TiffPage]]:
    """Open ``path`` and find its levels; raise :class:`UnreadableFileError` naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"Slide {path} does not exist; pass the path of a slide file")
    tifffile = _tifffile()
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:  # tifffile raises many types for broken files
        raise _unreadable(path, err) from None
    try:
        return tif, _level_pages(tif)
    except Exception as err:
        tif.close()
        raise _unreadable(path, err) from None


def _metadata_value(page: tifffile.TiffPage, field: str) -> float | None:
    match = re.search(_APERIO_FIELD.format(re.escape(field)), page.description or "")
    return float(match.group(1)) if match else None


def _magnification(page: tifffile.TiffPage) -> float | None:
    """Aperio ``AppMag`` from the ImageDescription, else the NDPI magnification tag."""
    value = _metadata_value(page, "AppMag")
    if value is None and _NDPI_MAGNIFICATION_TAG in page.tags:
        value = float(page.tags[_NDPI_MAGNIFICATION_TAG].value)
    return value if value and value > 0 else None


def _mpp(page: tifffile.TiffPage) -> float | None:
    """Aperio ``MPP``, else the TIFF X resolution when given per cm or inch (and plausible)."""
    value = _metadata_value(page, "MPP")
    if value:
        return value
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if unit not in (_CM, _INCH) or not numerator or not denominator:
        return None
    microns = (1e4 if unit == _CM else 25400.0) * denominator / numerator
    return microns if microns < 50 else None  # 72 dpi and the like are screen defaults


def _levels(pages: list[tifffile.TiffPage]) -> list[SlideLevel]:
    """Levels with the mean of the x and y downsamples, as OpenSlide reports them."""
    width, height = pages[0].imagewidth, pages[0].imagelength
    return [
        SlideLevel(
            i, p.imagewidth, p.imagelength, (width / p.imagewidth + height / p.imagelength) / 2
        )
        for i, p in enumerate(pages)
    ]


def _slide_info(path: Path, pages: list, base_magnification: float | None) -> SlideInfo:
    if base_magnification is not None and base_magnification <= 0:
        raise ValueError(f"base_magnification must be positive, got {base_magnification}")
    magnification = base_magnification or _magnification(pages[0])
    return SlideInfo(path, _levels(pages), magnification, _mpp(pages[0]))


def slide_levels(path: str | os.PathLike, *, base_magnification: float | None = None) -> SlideInfo:
    """The pyramid of a slide and its base magnification and microns per pixel, from headers.

    ``info.levels`` lists ``(level, width, height, downsample)``, level 0 (full resolution) first.
    ``info.magnification`` is the scanner's objective power (Aperio ``AppMag``, NDPI
    ``Magnification``); ``info.mpp`` is Aperio ``MPP`` or the TIFF resolution. Either is ``None``
    when the file does not say; ``base_magnification`` supplies (and overrides) the former.

    Example:
        >>> info = slide_levels("case1.svs")  # doctest: +SKIP
        >>> info.levels[1], info.magnification, info.mpp  # doctest: +SKIP
        (SlideLevel(level=1, width=11500, height=8228, downsample=4.0), 20.0, 0.499)
    """
    path = Path(path)
    tif, pages = _open_slide(path)
    with tif:
        return _slide_info(path, pages, base_magnification)


class _LevelReader:
    """Reads rectangles of one pyramid level by decoding only the stored segments they overlap.

    Uses tifffile's segment API (``page.dataoffsets`` and ``page.decode``, the same calls its Zarr
    store makes), so no Zarr is needed and a read costs the tiles (or strips) it touches.
    """

    def __init__(self, tif: tifffile.TiffFile, page: tifffile.TiffPage, path: Path):
        self.tif, self.page, self.path = tif, page, path
        self.width, self.height = page.imagewidth, page.imagelength
        if page.is_tiled:
            self.seg_h, self.seg_w = page.tilelength, page.tilewidth
        else:
            self.seg_h, self.seg_w = min(page.rowsperstrip or self.height, self.height), self.width
        self.cols = math.ceil(self.width / self.seg_w)
        self.samples = page.samplesperpixel
        cached = max(4, SEGMENT_CACHE_BYTES // (self.seg_h * self.seg_w * self.samples))
        self.segment = functools.lru_cache(maxsize=cached)(self._decode)

    def check(self) -> None:
        """Raise a clear error for a truncated file or a pixel layout tiling does not handle."""
        page, name = self.page, self.path.name
        if page.dtype != np.uint8 or self.samples not in (1, 3, 4):
            raise UnreadableFileError(
                f"{name}: {page.dtype} images with {self.samples} samples per pixel are not "
                "supported; tiling needs 8-bit brightfield (grey or RGB) slides"
            )
        if self.samples > 1 and page.planarconfig != 1:
            raise UnreadableFileError(
                f"{name}: colour planes are stored separately (PlanarConfiguration 2); "
                "convert the slide to interleaved RGB (e.g. with vips tiffsave) first"
            )
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if offsets.shape != counts.shape or (offsets + counts > self.tif.filehandle.size).any():
            raise _unreadable(self.path, EOFError("image data ends past the end of the file"))
        if page.compression not in _NATIVE_COMPRESSIONS and not importlib.util.find_spec(
            "imagecodecs"
        ):
            raise ImportError(
                f"{name} is {getattr(page.compression, 'name', page.compression)}-compressed, "
                'which needs the imagecodecs package: pip install "medfm[wsi]"'
            )

    def _decode(self, index: int) -> tuple[np.ndarray | None, int, int]:
        """Decoded segment ``index`` as ``(H, W, samples)`` and its top-left ``(y, x)``."""
        page, fh = self.page, self.tif.filehandle
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        row, col = divmod(index, self.cols)
        if not count:
            return None, row * self.seg_h, col * self.seg_w
        try:
            with fh.lock:
                fh.seek(offset)
                data = fh.read(count)
            if len(data) < count:
                raise EOFError(f"segment {index} ends past the end of the file")
            segment, indices, _ = page.decode(
                data,
                index,
                jpegtables=page.jpegtables,
                jpegheader=getattr(page, "jpegheader", None),
            )
        except Exception as err:  # codec errors come in many types
            raise _unreadable(self.path, err) from None
        segment = np.asarray(segment).reshape(segment.shape[-3:])
        return segment, int(indices[-3]), int(indices[-2])

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Pixels ``[y : y + height, x : x + width]`` as ``(height, width, samples)`` uint8."""
        out = np.full((height, width, self.samples), BLANK_VALUE, dtype=np.uint8)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        for row in range(y // self.seg_h, math.ceil(y1 / self.seg_h)):
            for col in range(x // self.seg_w, math.ceil(x1 / self.seg_w)):
                segment, sy, sx = self.segment(row * self.cols + col)
                if segment is None:
                    continue
                top, left = max(y, sy), max(x, sx)
                bottom = min(y1, sy + segment.shape[0])
                right = min(x1, sx + segment.shape[1])
                out[top - y : bottom - y, left - x : right - x] = segment[
                    top - sy : bottom - sy, left - sx : right - sx
                ]
        return out

    def subsampled(self, step: int) -> np.ndarray:
        """The whole level keeping every ``step``-th row and column, one segment at a time."""
        out = np.full(
            (math.ceil(self.height / step), math.ceil(self.width / step), self.samples),
            BLANK_VALUE,
            dtype=np.uint8,
        )
        for index in range(len(self.page.dataoffsets)):
            segment, sy, sx = self._decode(index)
            if segment is None:
                continue
            segment = segment[: self.height - sy, : self.width - sx]
            rows, cols = (-sy) % step, (-sx) % step  # first global multiples of step
            part = segment[rows::step, cols::step]
            top, left = (sy + rows) // step, (sx + cols) // step
            out[top : top + part.shape[0], left : left + part.shape[1]] = part
        return out
