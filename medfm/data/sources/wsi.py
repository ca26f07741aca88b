"""Whole-slide images (WSI): recognise them, list their pyramid, find tissue, cut tiles as PNGs.

Slides are read with ``tifffile`` (the optional ``[wsi]`` extra, plus ``imagecodecs`` for JPEG
tiles), which covers the TIFF-based formats: Aperio ``.svs``, Hamamatsu ``.ndpi``, Leica ``.scn``,
Ventana ``.bif`` and pyramidal (OME-)TIFF. Only headers are parsed up front; pixels are read one
stored tile (or strip) at a time, so a tile never costs more than the stored segments it overlaps
and the base level is never loaded whole.

Coordinates are ``(x, y)`` = (column, row) in base-level (level 0) pixels, as in OpenSlide.
Magnification is the objective power ("20x"); a level's magnification is the base
magnification divided by the level's downsample.

Example:
    >>> rows = tile_slide("case1.svs", "tiles/case1", magnification=20)  # doctest: +SKIP
    >>> rows[0]["path"], rows[0]["x"], rows[0]["tissue_fraction"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from medfm.data.sources.readers import UnreadableFileError
from medfm.data.writers import write_png

if TYPE_CHECKING:
    import tifffile

log = logging.getLogger(__name__)

WSI_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif")
TIFF_SUFFIXES = (".tif", ".tiff")
LARGE_SIDE = 8192  # a single-level TIFF wider or taller than this is treated as a slide
MASK_MIN_TILE_PX = 8  # the tissue mask resolves each tile into at least 8 x 8 mask pixels
MASK_MAX_SIDE = 2048  # the mask level is subsampled to at most this many pixels a side
SEGMENT_CACHE_BYTES = 64 * 2**20  # decoded tiles kept for reuse by neighbouring reads
BLANK_VALUE = 255  # segments absent from the file are blank glass
_NATIVE_COMPRESSIONS = {1, 8, 32946}  # none, deflate: decoded without imagecodecs
_APERIO_FIELD = r"\|\s*{}\s*=\s*([0-9.]+)"
_NDPI_MAGNIFICATION_TAG = 65421
_CM, _INCH = 3, 2  # TIFF ResolutionUnit values
_TILE_NAME = "{stem}_x{x}_y{y}.png"


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


def _choose_level(info: SlideInfo, magnification: float | None) -> tuple[int, float]:
    """Level to read and the scale from it to the output (<= 1), for ``magnification``."""
    if magnification is None:
        return 0, 1.0
    name = info.path.name
    if magnification <= 0:
        raise ValueError(f"magnification must be positive, got {magnification}")
    if info.magnification is None:
        raise ValueError(
            f"{name} does not record its scan magnification; pass base_magnification= "
            "(the objective power of level 0, e.g. 20 or 40), or magnification=None for level 0"
        )
    if magnification > info.magnification * (1 + 1e-3):
        raise ValueError(
            f"{name} was scanned at {info.magnification:g}x; request a magnification of at most "
            f"{info.magnification:g} (got {magnification:g})"
        )
    usable = [
        lvl.level
        for lvl in info.levels
        if info.level_magnification(lvl.level) >= magnification * (1 - 1e-3)
    ]
    level = max(usable, key=lambda i: info.levels[i].downsample)
    return level, magnification / info.level_magnification(level)


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


def _evenly_spaced(count: int, keep: int | None) -> list[int]:
    """``keep`` of ``range(count)``, first and last included, evenly spaced, in order."""
    if keep is None or keep >= count:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, keep).round()}) if keep else []


def _check_tiling_args(tile_size: int, tissue_threshold: float, max_tiles: int | None) -> None:
    if tile_size < 1:
        raise ValueError(f"tile_size must be a positive number of pixels, got {tile_size}")
    if not 0.0 <= tissue_threshold <= 1.0:
        raise ValueError(f"tissue_threshold must lie in [0, 1], got {tissue_threshold}")
    if max_tiles is not None and max_tiles < 0:
        raise ValueError(f"max_tiles must be >= 0 or None, got {max_tiles}")


class _Tile(NamedTuple):
    x: int  # base-level pixels
    y: int
    lx: int  # pixels of the level read
    ly: int
    tissue_fraction: float


def _candidate_tiles(
    info: SlideInfo, level: int, footprint: int, mask: np.ndarray, mask_scale: tuple
) -> Iterator[_Tile]:
    """Every whole tile of ``footprint`` level pixels, row-major, with its tissue fraction."""
    base, lvl = info.levels[0], info.levels[level]
    sx, sy = base.width / lvl.width, base.height / lvl.height
    for ly in range(0, lvl.height - footprint + 1, footprint):
        for lx in range(0, lvl.width - footprint + 1, footprint):
            box = (lx * sx, ly * sy, (lx + footprint) * sx, (ly + footprint) * sy)
            fraction = _tissue_fraction(mask, mask_scale, box)
            yield _Tile(round(lx * sx), round(ly * sy), lx, ly, fraction)


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


def _select_tiles(
    tif: tifffile.TiffFile,
    pages: list[tifffile.TiffPage],
    info: SlideInfo,
    level: int,
    footprint: int,
    tissue_threshold: float,
    max_tiles: int | None,
) -> list[_Tile]:
    """Tiles of ``level`` with enough tissue, capped at ``max_tiles``; no tile pixels are read."""
    mask_level = _mask_level(info, footprint * info.levels[level].downsample)
    mask, mask_scale = _slide_mask(tif, pages[mask_level], info, mask_level)
    tiles = [
        t
        for t in _candidate_tiles(info, level, footprint, mask, mask_scale)
        if t.tissue_fraction >= tissue_threshold
    ]
    return [tiles[i] for i in _evenly_spaced(len(tiles), max_tiles)]


def _tile_image(reader: _LevelReader, tile: _Tile, footprint: int, tile_size: int) -> np.ndarray:
    pixels = reader.read(tile.lx, tile.ly, footprint, footprint)
    pixels = pixels[..., 0] if reader.samples == 1 else pixels[..., :3]
    if footprint != tile_size:
        resized = Image.fromarray(pixels).resize((tile_size, tile_size), Image.Resampling.LANCZOS)
        pixels = np.asarray(resized)
    return pixels


def tile_slide(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tile_size: int = 224,
    magnification: float | None = None,
    tissue_threshold: float = 0.5,
    max_tiles: int | None = None,
    base_magnification: float | None = None,
    stem: str | None = None,
) -> list[dict]:
    """Cut a slide into non-overlapping tissue tiles written as PNGs; one row per tile.

    The level read is the lowest-resolution one whose magnification is still at least
    ``magnification`` (``None``: level 0, full resolution); its tiles of ``tile_size * level
    magnification / magnification`` pixels are resized (Lanczos) to ``tile_size`` when the two
    differ. Partial tiles at the right and bottom edges are skipped. A tile is kept when the share
    of its area marked by :func:`tissue_mask` (computed on a low-resolution level) is at least
    ``tissue_threshold``. With ``max_tiles``, that many kept tiles are taken evenly spaced through
    the row-major order, so a cap does not favour the top of the slide.

    Tiles are written to ``out_dir/<stem>_x<X>_y<Y>.png`` (RGB, or grey for a grey slide) and
    read one at a time, never the whole level. ``stem`` defaults to the slide's file stem; pass a
    pseudonym when file names may identify the patient (the PNGs carry no other metadata).
    Rows, in row-major order, hold ``path``, ``slide``, ``x``, ``y`` (top-left, level-0 pixels),
    ``level``, ``magnification`` (``None`` when unknown), ``tile_size`` and ``tissue_fraction``.

    Raises:
        ValueError: not a slide, bad arguments, or a magnification the slide does not reach.
        UnreadableFileError: the slide is broken or in an unsupported pixel layout.
    """
    path, out_dir = Path(path), Path(out_dir)
    _check_tiling_args(tile_size, tissue_threshold, max_tiles)
    if path.suffix.lower() not in WSI_SUFFIXES + TIFF_SUFFIXES:
        raise _not_a_slide(path)
    tif, pages = _open_slide(path)
    with tif:
        if path.suffix.lower() in TIFF_SUFFIXES and not _is_pyramid_or_large(pages):
            raise _not_a_slide(path)
        info = _slide_info(path, pages, base_magnification)
        level, scale = _choose_level(info, magnification)
        footprint = round(tile_size / scale)
        tiles = _select_tiles(tif, pages, info, level, footprint, tissue_threshold, max_tiles)
        reader = _LevelReader(tif, pages[level], path)
        reader.check()
        fields = {
            "slide": str(path.resolve()),
            "level": level,
            "magnification": info.magnification if magnification is None else magnification,
            "tile_size": tile_size,
            "stem": path.stem if stem is None else stem,
        }
        rows = [_write_tile(reader, t, footprint, tile_size, out_dir, fields) for t in tiles]
    log.info("%s: wrote %d tiles at level %d to %s", path.name, len(rows), level, out_dir)
    return rows


def _write_tile(
    reader: _LevelReader, tile: _Tile, footprint: int, tile_size: int, out_dir: Path, fields: dict
) -> dict:
    name = _TILE_NAME.format(stem=fields["stem"], x=tile.x, y=tile.y)
    written = write_png(_tile_image(reader, tile, footprint, tile_size), out_dir / name)
    return {
        "path": str(written.resolve()),
        "slide": fields["slide"],
        "x": tile.x,
        "y": tile.y,
        "level": fields["level"],
        "magnification": fields["magnification"],
        "tile_size": fields["tile_size"],
        "tissue_fraction": round(tile.tissue_fraction, 4),
    }
