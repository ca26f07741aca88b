"""SSIM and normalised mutual information rank identical > shifted > unrelated on real slices,
and agree with independent implementations (MONAI's SSIM, a histogram2d-based NMI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import skimage.data
import torch
from monai.metrics import SSIMMetric
from pydicom.data import get_testdata_file
from scipy.stats import entropy

from medfm.curation.similarity import cosine, normalized_mi, ssim

BREASTMNIST = Path(__file__).parents[3] / "shared" / "data" / "breastmnist.npz"


def ct_slices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real 512 x 512 CT slice (HU), the same slice moved by 3 pixels with a little noise,
    and a different CT (another patient)."""
    ct = pydicom.dcmread(get_testdata_file("693_UNCR.dcm")).pixel_array.astype(np.float64)
    other = pydicom.dcmread(get_testdata_file("explicit_VR-UN.dcm")).pixel_array.astype(float)
    noise = np.random.default_rng(0).normal(0.0, 5.0, ct.shape)
    return ct, np.roll(ct, 3, axis=1) + noise, other


@pytest.mark.parametrize("similarity", [ssim, normalized_mi])
def test_identical_over_shifted_over_unrelated_on_ct(similarity) -> None:
    ct, shifted, other = ct_slices()
    same = similarity(ct, ct.copy())
    near = similarity(ct, shifted)
    far = similarity(ct, other)
    assert same == pytest.approx(1.0, abs=1e-12)
    assert same > near > far
    assert near > 0.3 and far < near - 0.1  # clearly apart, not by rounding
    assert similarity(shifted, ct) == pytest.approx(near, abs=1e-12)  # symmetric


@pytest.mark.parametrize("similarity", [ssim, normalized_mi])
def test_identical_over_shifted_over_unrelated_on_photographs(similarity) -> None:
    camera = skimage.data.camera().astype(float)
    shifted = np.roll(camera, 2, axis=0)
    assert 1.0 == pytest.approx(similarity(camera, camera))
    assert similarity(camera, camera) > similarity(camera, shifted)
    assert similarity(camera, shifted) > similarity(camera, skimage.data.brick().astype(float))


def test_ranking_on_breastmnist() -> None:
    if not BREASTMNIST.exists():
        pytest.skip(f"BreastMNIST not found at {BREASTMNIST} (see shared/data/README.md)")
    with np.load(BREASTMNIST) as data:
        a, b = data["train_images"][:2].astype(float)
    shifted = np.roll(a, 1, axis=1)
    for similarity in (ssim, normalized_mi):
        assert similarity(a, a) > similarity(a, shifted) > similarity(a, b)


def test_ssim_agrees_with_monai() -> None:
    ct, shifted, _ = ct_slices()
    data_range = max(ct.max(), shifted.max()) - min(ct.min(), shifted.min())
    metric = SSIMMetric(spatial_dims=2, data_range=float(data_range))
    expected = metric(torch.tensor(ct)[None, None], torch.tensor(shifted)[None, None]).item()
    assert ssim(ct, shifted) == pytest.approx(expected, abs=1e-4)


def test_normalized_mi_equals_a_histogram2d_computation() -> None:
    ct, shifted, other = ct_slices()
    for b, bins in ((shifted, 32), (other, 32), (shifted, 7)):
        joint, _, _ = np.histogram2d(ct.ravel(), b.ravel(), bins=bins)
        h_a, h_b = entropy(joint.sum(axis=1)), entropy(joint.sum(axis=0))
        mutual = h_a + h_b - entropy(joint.ravel())
        assert normalized_mi(ct, b, bins) == pytest.approx(2 * mutual / (h_a + h_b), abs=1e-12)


def test_constant_and_independent_slices() -> None:
    flat = np.full((20, 20), 3.0)
    assert ssim(flat, flat) == 1.0
    assert normalized_mi(flat, flat) == 1.0
    assert normalized_mi(flat, np.arange(400.0).reshape(20, 20)) == 0.0
    rng = np.random.default_rng(0)
    noise_a, noise_b = rng.random((256, 256)), rng.random((256, 256))
    assert normalized_mi(noise_a, noise_b, bins=8) < 0.01
    assert abs(ssim(noise_a, noise_b)) < 0.05


def test_cosine() -> None:
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == 0.0
    assert cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([-3.0, 0.0])) == pytest.approx(-1.0)
    assert cosine(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(np.sqrt(0.5))
    with pytest.raises(ValueError, match="one length"):
        cosine(np.ones(3), np.ones(4))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="of one shape"):
        ssim(np.zeros((20, 20)), np.zeros((20, 21)))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((8, 40)), np.ones((8, 40)))
    with pytest.raises(ValueError, match="NaN"):
        normalized_mi(np.full((4, 4), np.nan), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="bins"):
        normalized_mi(np.zeros((4, 4)), np.zeros((4, 4)), bins=1)
