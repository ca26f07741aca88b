"""Small generated slides whose tissue geometry is known exactly, shared by the slide tests.

The slide is 1024 x 768 (x, y) at 20x with levels at downsample 2 and 4, tiled 256 x 256, laid out
as an Aperio SVS file. Its tissue is a rounded block spanning x 216..800 and y 20..560 plus a small
lobe near the bottom-right corner, so every 256-pixel tile is either mostly tissue (>= 0.88) or
mostly glass (<= 0.18), and the tiles to keep follow from the geometry.

The test modules skip without tifffile (``pytest.importorskip``) before any fixture here runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

try:
    import tifffile
except ImportError:  # the test modules skip themselves
    tifffile = None

WIDTH, HEIGHT, TILE = 1024, 768, 256
APERIO = (
    "Aperio Image Library v12.0.15\r\n1024x768 [0,0 1024x768] (256x256) RAW Q=100"
    "|AppMag = 20|StripeWidth = 1024|ScanScope ID = TEST|MPP = 0.5"
)


def tissue_geometry() -> np.ndarray:
    """Boolean ``(768, 1024)`` tissue: a superellipse block plus a round lobe."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    block = ((xx - 508) / 292) ** 4 + ((yy - 290) / 270) ** 4 <= 1
    lobe = (xx - 900) ** 2 + (yy - 650) ** 2 <= 60**2
    return block | lobe


def render(tissue: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pinkish-purple textured tissue on near-white glass, with one speck of dust."""
    rng = np.random.default_rng(seed)
    glass = rng.integers(236, 252, size=(*tissue.shape, 3))
    stain = np.array([186, 104, 168]) + rng.integers(-24, 25, size=(*tissue.shape, 3))
    image = np.where(tissue[..., None], stain, glass).astype(np.uint8)
    image[700:703, 80:83] = (60, 40, 70)  # dust: smaller than one pixel of the mask level
    return image


def pyramid(base: np.ndarray) -> list[np.ndarray]:
    return [base, base[::2, ::2], base[::4, ::4]]


def write_svs_layout(path: Path, base: np.ndarray, compression: str = "zlib") -> Path:
    """Aperio layout: tiled base, stripped thumbnail, tiled reduced levels."""
    levels = pyramid(base)
    options = {"photometric": "rgb", "compression": compression, "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], tile=(TILE, TILE), description=APERIO, **options)
        tif.write(base[::8, ::8], description="Aperio Image Library v12.0.15\n-> 128x96", **options)
        for level in levels[1:]:
            tif.write(level, tile=(TILE, TILE), description="Aperio Image Library v12", **options)
    return path


def write_subifd_pyramid(path: Path, base: np.ndarray) -> Path:
    """Generic pyramidal TIFF (levels as SubIFDs), 0.25 um/px, no magnification recorded."""
    levels = pyramid(base)
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            per_cm = 1e4 / (0.25 * 2**i)
            tif.write(
                level,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="zlib",
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                subifds=len(levels) - 1 if i == 0 else None,
                subfiletype=1 if i else 0,
                metadata=None,
            )
    return path


def true_fractions(tissue: np.ndarray, footprint: int) -> dict[tuple[int, int], float]:
    """Tissue fraction of every whole ``footprint``-pixel base tile, keyed by ``(x, y)``."""
    return {
        (x, y): float(tissue[y : y + footprint, x : x + footprint].mean())
        for y in range(0, HEIGHT - footprint + 1, footprint)
        for x in range(0, WIDTH - footprint + 1, footprint)
    }


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return tissue_geometry()


@pytest.fixture(scope="module")
def base(tissue) -> np.ndarray:
    return render(tissue)


@pytest.fixture(scope="module")
def slide(tmp_path_factory, base) -> Path:
    """The SVS-layout slide, named .tif so that is_wsi must read its header."""
    return write_svs_layout(tmp_path_factory.mktemp("slides") / "case1.tif", base)


@pytest.fixture(scope="module")
def subifd_slide(tmp_path_factory, base) -> Path:
    return write_subifd_pyramid(tmp_path_factory.mktemp("slides") / "pyramid.ome.tif", base)


@pytest.fixture(scope="module")
def levels(base) -> list[np.ndarray]:
    """The slide's three pyramid levels, level 0 first."""
    return pyramid(base)


@pytest.fixture(scope="module")
def tile_fractions(tissue) -> dict[tuple[int, int], float]:
    """True tissue fraction of every whole 256-pixel base tile, keyed by ``(x, y)``."""
    return true_fractions(tissue, TILE)


@pytest.fixture(scope="module")
def write_svs() -> Callable[..., Path]:
    """:func:`write_svs_layout`, for tests that write their own slide."""
    return write_svs_layout
