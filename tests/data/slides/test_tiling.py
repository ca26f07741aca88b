"""Tests for medfm.data.slides.tiling on the ``conftest.py`` slides, whose tiles to keep follow
from their tissue geometry."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfm.data.slides import reading
from medfm.data.slides.reading import slide_levels
from medfm.data.slides.tiling import tile_slide
from medfm.data.sources.readers import UnreadableFileError

tifffile = pytest.importorskip("tifffile", reason='WSI support needs pip install "medfm[wsi]"')

WIDTH, HEIGHT, TILE = 1024, 768, 256  # the slides of conftest.py


def load_png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_tile_slide_at_base_keeps_tissue_tiles_with_exact_pixels(
    tmp_path, slide, base, tile_fractions
):
    rows = tile_slide(slide, tmp_path, tile_size=TILE, magnification=20)
    expected = [xy for xy, f in tile_fractions.items() if f >= 0.5]
    assert [(r["x"], r["y"]) for r in rows] == expected  # row-major: sorted by y, then x
    for row in rows:
        x, y = row["x"], row["y"]
        assert Path(row["path"]).name == f"case1_x{x}_y{y}.png"
        assert row["slide"] == str(slide.resolve())
        assert (row["level"], row["magnification"], row["tile_size"]) == (0, 20, TILE)
        assert row["tissue_fraction"] >= 0.5
        np.testing.assert_array_equal(load_png(row["path"]), base[y : y + TILE, x : x + TILE])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(r["path"]).name for r in rows)


def test_tile_slide_at_10x_reads_level_1_and_reports_base_coordinates(tmp_path, slide, levels):
    level1 = levels[1]
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
    original = reading._LevelReader._decode

    def record(reader, index):
        decoded.append((reader.width, index))
        return original(reader, index)

    monkeypatch.setattr(reading._LevelReader, "_decode", record)
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


def test_jpeg_tiles_decode_like_tifffile(tmp_path, base, write_svs):
    pytest.importorskip("imagecodecs", reason="JPEG tiles need imagecodecs")
    slide = write_svs(tmp_path / "jpeg.svs", base, compression="jpeg")
    rows = tile_slide(slide, tmp_path / "tiles", tile_size=TILE, magnification=20)
    decoded = tifffile.imread(slide, series=0, level=0)
    assert len(rows) == 4
    for row in rows:
        x, y = row["x"], row["y"]
        np.testing.assert_array_equal(load_png(row["path"]), decoded[y : y + TILE, x : x + TILE])


def test_real_slide_tiles_match_tifffile(tmp_path, real_svs):
    info = slide_levels(real_svs)
    assert info.magnification == 20.0 and info.mpp == pytest.approx(0.499)
    rows = tile_slide(real_svs, tmp_path, tile_size=224, max_tiles=8)
    assert info.levels[0].width > 224 and 0 < len(rows) <= 8
    decoded = tifffile.imread(real_svs, series=0, level=0)
    assert decoded.shape == (info.levels[0].height, info.levels[0].width, 3)
    for row in rows:
        x, y = row["x"], row["y"]
        np.testing.assert_array_equal(load_png(row["path"]), decoded[y : y + 224, x : x + 224])


def test_ingest_tiles_slides_into_pseudonymised_rows(tmp_path, base, tile_fractions, write_svs):
    from medfm.data.ingestion.ingest import ingest
    from medfm.data.ingestion.rows import TileOptions

    src = tmp_path / "src" / "center_x" / "case_7"
    src.mkdir(parents=True)
    write_svs(src / "ZZSURNAME_slide.svs", base)
    (src.parent / "broken.svs").write_bytes(b"II*\0" + b"\0" * 12)
    result = ingest(
        [tmp_path / "src"],
        tmp_path / "out",
        salt="s",
        center="folder:0",
        tiles=TileOptions(tile_size=TILE),
        progress=False,
    )
    expected = {k for k, f in tile_fractions.items() if f >= 0.5}
    assert len(result.rows) == len(expected)
    assert result.counts["seen"] == 2 and result.counts["accepted"] == 1
    (reason,) = result.counts["rejected_by_reason"]  # by the file's id, never its name
    (row,) = csv.DictReader(open(result.quarantine))
    assert "broken" not in reason and row["id"] in reason and row["suffix"] == ".svs"
    for row in result.rows:
        assert row["format"] == "wsi_tile" and row["modality"] == "SM"
        assert row["center"] == "center_x" and row["series"].startswith("slide-")
        assert "ZZSURNAME" not in row["path"] and Path(row["path"]).is_file()
        assert row["shape"] == f"{TILE}x{TILE}x3"
    assert "ZZSURNAME" not in (tmp_path / "out" / "manifest.csv").read_text().replace(
        str(tmp_path / "src"), ""
    )
