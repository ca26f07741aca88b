"""Tests for medfm.data.sources.wsi on small generated slides whose tissue geometry is known
exactly.

The slide is 1024 x 768 (x, y) at 20x with levels at downsample 2 and 4, tiled 256 x 256, laid out
as an Aperio SVS file. Its tissue is a rounded block spanning x 216..800 and y 20..560 plus a small
lobe near the bottom-right corner, so every 256-pixel tile is either mostly tissue (>= 0.88) or
mostly glass (<= 0.18), and the tiles to keep follow from the geometry.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfm.data.sources import wsi
from medfm.data.sources.readers import UnreadableFileError
from medfm.data.sources.wsi import SlideLevel, is_wsi, slide_levels, tile_slide, tissue_mask

tifffile = pytest.importorskip("tifffile", reason='WSI support needs pip install "medfm[wsi]"')

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


def true_fractions(tissue: np.ndarray, footprint: int) -> dict[tuple[int, int], float]:
    """Tissue fraction of every whole ``footprint``-pixel base tile, keyed by ``(x, y)``."""
    return {
        (x, y): float(tissue[y : y + footprint, x : x + footprint].mean())
        for y in range(0, HEIGHT - footprint + 1, footprint)
        for x in range(0, WIDTH - footprint + 1, footprint)
    }


def load_png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_geometry_leaves_no_tile_near_the_threshold(tissue):
    fractions = true_fractions(tissue, TILE).values()
    assert all(f >= 0.85 or f <= 0.2 for f in fractions)
    assert sum(f >= 0.5 for f in fractions) == 4


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


def test_tissue_mask_marks_the_blob_and_not_the_glass(base, tissue):
    mask = tissue_mask(pyramid(base)[2])
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


def test_tile_slide_at_base_keeps_tissue_tiles_with_exact_pixels(tmp_path, slide, base, tissue):
    rows = tile_slide(slide, tmp_path, tile_size=TILE, magnification=20)
    expected = [xy for xy, f in true_fractions(tissue, TILE).items() if f >= 0.5]
    assert [(r["x"], r["y"]) for r in rows] == expected  # row-major: sorted by y, then x
    for row in rows:
        x, y = row["x"], row["y"]
        assert Path(row["path"]).name == f"case1_x{x}_y{y}.png"
        assert row["slide"] == str(slide.resolve())
        assert (row["level"], row["magnification"], row["tile_size"]) == (0, 20, TILE)
        assert row["tissue_fraction"] >= 0.5
        np.testing.assert_array_equal(load_png(row["path"]), base[y : y + TILE, x : x + TILE])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(r["path"]).name for r in rows)


def test_tile_slide_at_10x_reads_level_1_and_reports_base_coordinates(tmp_path, slide, base):
    level1 = pyramid(base)[1]
    rows = tile_slide(slide, tmp_path, tile_size=128, magnification=10)
    assert [(r["x"], r["y"]) for r in rows] == [(256, 0), (512, 0), (256, 256), (512, 256)]
    for row in rows:
        assert (row["level"], row["magnification"]) == (1, 10)
        lx, ly = row["x"] // 2, row["y"] // 2
        np.testing.assert_array_equal(load_png(row["path"]), level1[ly : ly + 128, lx : lx + 128])


def test_tile_slide_between_levels_resizes_from_the_finer_level(tmp_path, slide, base):
    rows = tile_slide(slide, tmp_path, tile_size=TILE, magnification=15, tissue_threshold=0.0)
    footprint = round(TILE * 20 / 15)  # 341 base pixels per tile
    assert len(rows) == (WIDTH // footprint) * (HEIGHT // footprint)
    for row in rows:
        x, y = row["x"], row["y"]
        assert x % footprint == 0 and y % footprint == 0 and row["level"] == 0
        region = Image.fromarray(base[y : y + footprint, x : x + footprint])
        resized = np.asarray(region.resize((TILE, TILE), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(load_png(row["path"]), resized)


def test_tile_slide_decodes_only_the_kept_tiles_never_a_whole_level(monkeypatch, tmp_path, slide):
    def whole_level(*args, **kwargs):
        raise AssertionError("a whole level was decoded")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", whole_level)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", whole_level)
    decoded = []
    original = wsi._LevelReader._decode

    def record(reader, index):
        decoded.append((reader.width, index))
        return original(reader, index)

    monkeypatch.setattr(wsi._LevelReader, "_decode", record)
    rows = tile_slide(slide, tmp_path, tile_size=TILE, magnification=20)
    assert len(rows) == 4
    base_segments = sorted(index for width, index in decoded if width == WIDTH)
    assert base_segments == [1, 2, 5, 6]  # the kept tiles of the 4 x 3 grid, each once
    assert {width for width, _ in decoded} == {WIDTH, WIDTH // 4}  # plus the mask level


def test_max_tiles_caps_the_count_keeps_row_major_order_and_stem_names_files(tmp_path, slide):
    every = tile_slide(slide, tmp_path / "all", tile_size=128, tissue_threshold=0.0)
    capped = tile_slide(slide, tmp_path / "cap", tile_size=128, tissue_threshold=0.0, max_tiles=5)
    assert len(every) == 8 * 6 and len(capped) == 5
    positions = [(r["x"], r["y"]) for r in every]
    picked = [positions.index((r["x"], r["y"])) for r in capped]
    assert picked == sorted(picked) and picked[0] == 0 and picked[-1] == len(every) - 1
    assert len(list((tmp_path / "cap").iterdir())) == 5
    renamed = tile_slide(slide, tmp_path / "named", tile_size=128, max_tiles=1, stem="img-7f3a")
    assert Path(renamed[0]["path"]).name == f"img-7f3a_x{renamed[0]['x']}_y{renamed[0]['y']}.png"
    assert tile_slide(slide, tmp_path / "none", max_tiles=0) == []


def test_magnification_beyond_the_scan_is_refused(tmp_path, slide):
    with pytest.raises(ValueError, match=r"case1\.tif was scanned at 20x.*at most 20"):
        tile_slide(slide, tmp_path, magnification=40)


def test_magnification_needs_a_base_magnification_when_the_file_has_none(tmp_path, subifd_slide):
    with pytest.raises(ValueError, match="pyramid.ome.tif.*base_magnification"):
        tile_slide(subifd_slide, tmp_path, tile_size=128, magnification=10)
    rows = tile_slide(
        subifd_slide, tmp_path, tile_size=128, magnification=10, base_magnification=20
    )
    assert [(r["x"], r["y"], r["level"]) for r in rows] == [
        (256, 0, 1),
        (512, 0, 1),
        (256, 256, 1),
        (512, 256, 1),
    ]


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"tile_size": 0}, "tile_size"),
        ({"tissue_threshold": 1.5}, "tissue_threshold"),
        ({"max_tiles": -1}, "max_tiles"),
        ({"magnification": 0}, "magnification must be positive"),
        ({"base_magnification": -20}, "base_magnification"),
    ],
)
def test_bad_arguments_are_refused_before_any_tile(tmp_path, slide, option, match):
    with pytest.raises(ValueError, match=match):
        tile_slide(slide, tmp_path / "out", **option)
    assert not (tmp_path / "out").exists()


def test_ordinary_image_is_not_tiled(tmp_path):
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.full((64, 48, 3), 200, np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match=r"small\.tif is not a whole-slide image"):
        tile_slide(small, tmp_path / "out")


@pytest.mark.parametrize("keep", [0, 16, 3000, 0.7])
def test_broken_slide_raises_unreadable_naming_the_file(tmp_path, slide, keep):
    data = slide.read_bytes()
    broken = tmp_path / "broken.svs"
    broken.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(UnreadableFileError, match=r"broken\.svs"):
        tile_slide(broken, tmp_path / "out", tile_size=128)
    assert not (tmp_path / "out").exists()  # caught before any tile is written


def test_garbage_svs_raises_unreadable_from_slide_levels(tmp_path):
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"this is not a slide\n" * 100)
    with pytest.raises(UnreadableFileError, match=r"garbage\.svs.*not a readable"):
        slide_levels(garbage)


def test_missing_tifffile_asks_for_the_wsi_extra(monkeypatch, slide):
    monkeypatch.setitem(sys.modules, "tifffile", None)
    with pytest.raises(ImportError, match=r'pip install "medfm\[wsi\]"'):
        is_wsi(slide)


def test_jpeg_tiles_decode_like_tifffile(tmp_path, base):
    pytest.importorskip("imagecodecs", reason="JPEG tiles need imagecodecs")
    slide = write_svs_layout(tmp_path / "jpeg.svs", base, compression="jpeg")
    rows = tile_slide(slide, tmp_path / "tiles", tile_size=TILE, magnification=20)
    decoded = tifffile.imread(slide, series=0, level=0)
    assert len(rows) == 4
    for row in rows:
        x, y = row["x"], row["y"]
        np.testing.assert_array_equal(load_png(row["path"]), decoded[y : y + TILE, x : x + TILE])


@pytest.mark.skipif(
    not os.environ.get("MEDFM_TEST_SVS"), reason="set MEDFM_TEST_SVS to a real .svs to run"
)
def test_real_slide_tiles_match_tifffile(tmp_path):
    pytest.importorskip("imagecodecs", reason="real slides use JPEG tiles")
    slide = Path(os.environ["MEDFM_TEST_SVS"])
    info = slide_levels(slide)
    rows = tile_slide(slide, tmp_path, tile_size=224, max_tiles=8)
    assert info.levels[0].width > 224 and 0 < len(rows) <= 8
    decoded = tifffile.imread(slide, series=0, level=0)
    for row in rows:
        x, y = row["x"], row["y"]
        np.testing.assert_array_equal(load_png(row["path"]), decoded[y : y + 224, x : x + 224])


def test_ingest_tiles_slides_into_pseudonymised_rows(tmp_path, base, tissue):
    from medfm.data.ingestion.ingest import ingest
    from medfm.data.ingestion.rows import TileOptions

    src = tmp_path / "src" / "center_x" / "case_7"
    src.mkdir(parents=True)
    write_svs_layout(src / "ZZSURNAME_slide.svs", base)
    (src.parent / "broken.svs").write_bytes(b"II*\0" + b"\0" * 12)
    result = ingest(
        [tmp_path / "src"],
        tmp_path / "out",
        salt="s",
        center="folder:0",
        tiles=TileOptions(tile_size=TILE),
        progress=False,
    )
    expected = {k for k, f in true_fractions(tissue, TILE).items() if f >= 0.5}
    assert len(result.rows) == len(expected)
    assert result.counts["seen"] == 2 and result.counts["accepted"] == 1
    assert list(result.counts["rejected_by_reason"]) and "broken.svs" in next(
        iter(result.counts["rejected_by_reason"])
    )
    for row in result.rows:
        assert row["format"] == "wsi_tile" and row["modality"] == "SM"
        assert row["center"] == "center_x" and row["series"].startswith("slide-")
        assert "ZZSURNAME" not in row["path"] and Path(row["path"]).is_file()
        assert row["shape"] == f"{TILE}x{TILE}x3"
    assert "ZZSURNAME" not in (tmp_path / "out" / "manifest.csv").read_text().replace(
        str(tmp_path / "src"), ""
    )
