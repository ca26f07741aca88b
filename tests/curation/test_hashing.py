"""dHash of medfm.curation.hashing equals imagehash.dhash bit for bit on real images: pydicom-data
slices, scikit-image's sample images and BreastMNIST (when ../shared/data has it)."""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pydicom
import pytest
import skimage.data
from PIL import Image
from pydicom.data import get_testdata_file

from medfm.curation import hashing
from medfm.curation.hashing import dhash, dhash_batch, hamming, to_uint8

ROOT = Path(__file__).parents[2]
BREASTMNIST = ROOT.parent / "shared" / "data" / "breastmnist.npz"
DICOM_FILES = [
    "CT_small.dcm",  # CT, 128 x 128, int16
    "MR_small.dcm",  # MR, 64 x 64
    "emri_small.dcm",  # MR, 10 frames of 64 x 64
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # MR, 484 x 484, uint16
    "693_UNCR.dcm",  # CT, 512 x 512, int16
    "eCT_Supplemental.dcm",  # CT, 2 frames of 512 x 512
    "explicit_VR-UN.dcm",  # CT, 512 x 512
    "MR2_UNCR.dcm",  # MR, 1024 x 1024
    "RG1_UNCR.dcm",  # radiograph, 1955 x 1841, uint16
    "OBXXXX1A.dcm",  # ultrasound, 600 x 800, uint8
    "SC_rgb.dcm",  # RGB, 100 x 100
    "US1_UNCR.dcm",  # ultrasound, RGB, 480 x 640
]
SKIMAGE_NAMES = ["camera", "astronaut", "retina", "coins", "moon", "text", "brick", "horse"]


def reference(image: np.ndarray, hash_size: int = 8) -> int:
    """imagehash's dHash of an array, as an int."""
    return int(str(imagehash.dhash(Image.fromarray(image), hash_size)), 16)


def grey_slices(pixels: np.ndarray) -> list[np.ndarray]:
    """The 2D uint8 slices of a pixel array: RGB through PIL's convert("L") (as imagehash does),
    frames one by one, other dtypes by their own min-max (to_uint8)."""
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        return [np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("L"))]
    if pixels.ndim == 3:
        return [s for frame in pixels for s in grey_slices(frame)]
    return [pixels if pixels.dtype == np.uint8 else to_uint8(pixels)]


@pytest.mark.parametrize("name", DICOM_FILES)
def test_dhash_equals_imagehash_on_pydicom_data(name: str) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom-data")
    slices = grey_slices(pydicom.dcmread(path).pixel_array)
    expected = [reference(s) for s in slices]
    assert [dhash(s) for s in slices] == expected
    assert dhash_batch(slices).tolist() == expected
    assert all(s.std() > 0 for s in slices)  # real content, not blank frames


@pytest.mark.parametrize("name", SKIMAGE_NAMES + ["brain"])
def test_dhash_equals_imagehash_on_skimage_data(name: str) -> None:
    try:
        image = getattr(skimage.data, name)()
    except (ModuleNotFoundError, OSError, ValueError, pytest.skip.Exception) as err:
        # brain() is fetched with pooch on first use; skimage skips itself under pytest
        pytest.skip(f"skimage.data.{name}() needs a download, not possible offline: {err}")
    slices = grey_slices(image) if image.dtype != bool else [to_uint8(image)]
    expected = [reference(s) for s in slices]
    assert dhash_batch(slices).tolist() == expected
    for size in (2, 4, 8, 16):  # dhash takes any hash size, as imagehash
        assert dhash(slices[0], size) == reference(slices[0], size)


def test_rgb_dicom_hash_equals_imagehash_of_the_rgb_image() -> None:
    """imagehash converts RGB to L itself: hashing our grey slice gives its hash of the RGB."""
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).pixel_array
    assert dhash(grey_slices(rgb)[0]) == int(str(imagehash.dhash(Image.fromarray(rgb))), 16)


def test_dhash_equals_imagehash_on_breastmnist() -> None:
    if not BREASTMNIST.exists():
        pytest.skip(f"BreastMNIST not found at {BREASTMNIST} (see shared/data/README.md)")
    with np.load(BREASTMNIST) as data:
        images = np.concatenate([data["train_images"], data["test_images"]])
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    expected = [reference(image) for image in images]
    assert dhash_batch(images).tolist() == expected
    assert len(set(expected)) > 0.9 * len(expected)


def test_batch_of_mixed_shapes_and_dtypes_equals_per_slice_hashes() -> None:
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array  # int16 HU
    camera = skimage.data.camera()
    slices = [ct, camera, ct.astype(np.float32) * 0.5 + 3, camera[:100, :77], camera.T]
    hashes = dhash_batch(slices)
    assert hashes.dtype == np.uint64 and hashes.shape == (5,)
    assert hashes.tolist() == [reference(s if s.dtype == np.uint8 else to_uint8(s)) for s in slices]
    assert hashes[0] == hashes[2]  # min-max mapping: an affine intensity change hashes the same
    assert dhash_batch([]).shape == (0,)


def test_pillow_fallback_gives_the_same_hashes(monkeypatch) -> None:
    images = [skimage.data.camera(), skimage.data.text(), skimage.data.coins()[:5, :4]]
    fast = dhash_batch(images)
    assert hashing._pillow_pass_order() is not None, "the numpy resize no longer matches Pillow"
    monkeypatch.setattr(hashing, "_pillow_pass_order", lambda: None)
    assert dhash_batch(images).tolist() == fast.tolist() == [reference(i) for i in images]


def test_dhash_matches_imagehash_on_random_shapes_both_pass_orders() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):
        shape = tuple(int(v) for v in rng.integers(1, 400, 2))
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        assert dhash(image) == reference(image), shape


def test_to_uint8_maps_min_max_and_rounds_half_to_even() -> None:
    values = np.array([[-1000.0, -999.0], [-998.0, -996.0]])  # (x - min) / 4 * 255
    expected = np.array([[0, 64], [128, 255]], dtype=np.uint8)  # 63.75 -> 64, 127.5 -> 128
    assert np.array_equal(to_uint8(values), expected)
    assert np.array_equal(to_uint8(np.full((3, 4), 7.0)), np.zeros((3, 4), np.uint8))
    halves = to_uint8(np.array([[0.0, 1.0, 2.0, 3.0, 510.0]]))  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    assert halves.tolist() == [[0, 0, 1, 2, 255]]
    with pytest.raises(ValueError, match="NaN or Inf"):
        to_uint8(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="2D"):
        to_uint8(np.zeros((2, 2, 2)))


def test_hamming_counts_differing_bits_with_broadcasting() -> None:
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(np.uint64(2**64 - 1), 0) == 64
    a = np.array([0, 1, 3, 2**63], dtype=np.uint64)
    assert hamming(a, np.uint64(1)).tolist() == [1, 0, 1, 2]
    table = hamming(a[:, None], a[None, :])
    assert table.shape == (4, 4) and table.dtype == np.int64
    assert np.array_equal(table, table.T) and not table.diagonal().any()
    assert table[2, 3] == 3


def test_near_identical_slices_hash_close_and_different_slices_far() -> None:
    frames = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array
    hashes = dhash_batch(list(frames))
    noisy = frames[0] + np.random.default_rng(0).normal(0, 1.0, frames[0].shape)
    assert hamming(dhash_batch([noisy])[0], hashes[0]) <= 6
    assert hamming(dhash(skimage.data.camera()), dhash(skimage.data.moon())) > 16


def test_bad_hash_sizes_raise() -> None:
    with pytest.raises(ValueError, match=">= 2"):
        dhash(skimage.data.camera(), 1)
    with pytest.raises(ValueError, match="uint64"):
        dhash_batch([skimage.data.camera()], 9)
