"""Tiling whole-slide images: a grid of tissue tiles at a magnification, written as PNGs.

Example:
    >>> rows = tile_slide("case1.svs", "tiles/case1", magnification=20)  # doctest: +SKIP
    >>> rows[0]["path"], rows[0]["x"], rows[0]["tissue_fraction"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image

from medfm.data.slides.reading import (
    TIFF_SUFFIXES,
    WSI_SUFFIXES,
    SlideInfo,
    _is_pyramid_or_large,
    _LevelReader,
    _not_a_slide,
    _open_slide,
    _slide_info,
)
from medfm.data.slides.tissue import _mask_level, _slide_mask, _tissue_fraction
from medfm.data.writers import write_png

if TYPE_CHECKING:
    import tifffile

log = logging.getLogger(__name__)

_TILE_NAME = "{stem}_x{x}_y{y}.png"


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
    log.info("%s: wrote %d tiles at level %d", fields["stem"], len(rows), level)  # no file name
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
