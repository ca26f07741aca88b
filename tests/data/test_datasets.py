"""Tests for medfm.data.datasets and medfm.data.transforms.compose on an ingested synthetic
manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfm.config import load_config
from medfm.data.datasets import SAMPLE_KEYS, build_dataset, rows_for_split, stack_images
from medfm.data.ingestion.ingest import ingest
from medfm.data.ingestion.manifest import read_manifest
from medfm.data.synthetic import SyntheticSpec, generate, write_dataset
from medfm.data.transforms.compose import MatchChannelsd

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*nvImageCodec"),
    pytest.mark.filterwarnings("ignore:.*ImageOrientationPatient"),
]
SPEC = SyntheticSpec(n_centers=3, cases_per_center=2, images_per_case=1, size=32, seed=7)


def data_cfg(*overrides: str):
    return load_config(None, ["data.image_size=32", *overrides]).data


@pytest.fixture(scope="module")
def manifest_rows(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("ds")
    write_dataset(root / "data", SPEC)
    ingest(
        [root / "data" / "raw"],
        root / "ingest",
        labels=root / "data" / "labels.csv",
        salt="s",
        progress=False,
    )
    return read_manifest(root / "ingest")


@pytest.fixture(scope="module")
def expected_pixels() -> dict[str, np.ndarray]:
    """The generated uint8 images keyed by ``<center>/<case>``."""
    return {f"{it.center.name}/{it.case}": it.image for it in generate(SPEC)}


def test_samples_are_float_images_in_unit_range(manifest_rows, expected_pixels):
    assert {r["format"] for r in manifest_rows} == {"dicom", "nifti", "png"}
    dataset = build_dataset(manifest_rows, data_cfg("data.cache=none"))
    assert len(dataset) == len(manifest_rows) == 6
    for row, sample in zip(manifest_rows, dataset, strict=True):
        image = sample["image"]
        assert isinstance(image, torch.Tensor)
        assert image.dtype == torch.float32
        assert tuple(image.shape) == (1, 32, 32)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        # Every format is loaded x-first and scaled from [0, 255] to [0, 1].
        key = "/".join(Path(row["path"]).parts[-3:-1])
        np.testing.assert_allclose(image[0].numpy(), expected_pixels[key].T / 255.0, atol=1e-6)
        assert set(SAMPLE_KEYS) <= set(sample)
        assert (
            sample["label"],
            sample["center"],
            sample["patient"],
            sample["id"],
            sample["split"],
        ) == (row["label"], row["center"], row["patient"], row["id"], row["split"])


def test_memory_cache_gives_same_tensors(manifest_rows):
    plain = build_dataset(manifest_rows, data_cfg("data.cache=none"))
    cached = build_dataset(manifest_rows, data_cfg("data.cache=memory"))
    assert type(plain).__name__ == "Dataset" and type(cached).__name__ == "CacheDataset"
    a = stack_images(plain, range(len(plain)))
    b = stack_images(cached, range(len(cached)))
    assert a.shape == (6, 1, 32, 32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resize_and_three_channels(manifest_rows):
    dataset = build_dataset(
        manifest_rows[:2], data_cfg("data.image_size=16", "data.channels=3", "data.cache=none")
    )
    image = dataset[0]["image"]
    assert tuple(image.shape) == (3, 16, 16)
    torch.testing.assert_close(image[0], image[2])


def test_bad_cache_value_raises(manifest_rows):
    with pytest.raises(ValueError, match="data.cache='disk'"):
        build_dataset(manifest_rows, data_cfg("data.cache=disk"))


def test_rows_for_split(manifest_rows):
    assert rows_for_split(manifest_rows, None) == list(manifest_rows)
    by_split = {s: rows_for_split(manifest_rows, s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in by_split.values()) == len(manifest_rows)
    assert all(r["split"] == s for s, rows in by_split.items() for r in rows)


def test_rgb_tiles_become_grey_or_stay_rgb(tmp_path):
    spec = SyntheticSpec(n_centers=1, cases_per_center=2, images_per_case=1, size=32, color=True)
    write_dataset(tmp_path / "data", spec)
    result = ingest([tmp_path / "data" / "raw"], tmp_path / "out", salt="s", progress=False)
    assert {r["shape"] for r in result.rows} == {"32x32x3"}
    grey = build_dataset(result.rows, data_cfg("data.cache=none"))[0]["image"]
    rgb = build_dataset(result.rows, data_cfg("data.cache=none", "data.channels=3"))[0]["image"]
    assert tuple(grey.shape) == (1, 32, 32) and tuple(rgb.shape) == (3, 32, 32)
    torch.testing.assert_close(grey[0], rgb.mean(dim=0))
    assert not torch.equal(rgb[0], rgb[2])


def test_match_channels_rgb_to_grey_is_mean():
    img = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(3, 4, 5)
    out = MatchChannelsd("image", 1)({"image": img, "label": "2"})
    assert out["label"] == "2"
    assert tuple(out["image"].shape) == (1, 4, 5)
    torch.testing.assert_close(out["image"][0], (img[0] + img[1] + img[2]) / 3)


def test_match_channels_grey_to_rgb_repeats_and_3d_works():
    img = torch.rand(1, 2, 4, 5)
    out = MatchChannelsd("image", 3)({"image": img})["image"]
    assert tuple(out.shape) == (3, 2, 4, 5)
    for c in range(3):
        torch.testing.assert_close(out[c], img[0])


def test_match_channels_keeps_matching_and_rejects_impossible():
    img = torch.rand(3, 4, 4)
    data = {"image": img}
    out = MatchChannelsd("image", 3)(data)
    assert out["image"] is img and out is not data
    with pytest.raises(ValueError, match="2 channels to 3"):
        MatchChannelsd("image", 3)({"image": torch.rand(2, 4, 4)})
