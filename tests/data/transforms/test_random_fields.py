"""Tests for medfm.data.transforms.random_fields: Gaussian random fields and the augmentations on
them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from medfm.data.transforms.random_fields import (
    RandFieldAffine,
    RandFieldAffined,
    RandFieldIntensity,
    RandFieldIntensityd,
    _rotate,
    gaussian_random_field,
)


def neighbour_correlation(field: np.ndarray) -> float:
    return float(np.corrcoef(field[:, :-1].ravel(), field[:, 1:].ravel())[0, 1])


def test_field_shapes_dtype_and_unit_std_in_2d_and_3d():
    f2 = gaussian_random_field((128, 128), 2.0, 0)
    f3 = gaussian_random_field((24, 20, 16), 1.5, 0)
    assert f2.shape == (128, 128) and f3.shape == (24, 20, 16)
    assert f2.dtype == f3.dtype == np.float32
    for f in (f2, f3):
        assert abs(float(f.mean())) < 0.1
        assert abs(float(f.std()) - 1.0) < 0.1


def test_pointwise_variance_is_one_even_for_long_length_scales():
    draws = np.stack([gaussian_random_field((6, 6), 100.0, seed) for seed in range(300)])
    # Nearly constant within a draw, N(0, 1) across draws.
    assert draws.std(axis=(1, 2)).max() < 0.01
    assert abs(float(draws[:, 0, 0].std()) - 1.0) < 0.1


@pytest.mark.parametrize("length_scale", [1.0, 2.0, 4.0])
def test_neighbour_correlation_matches_the_gaussian_kernel(length_scale):
    field = gaussian_random_field((160, 160), length_scale, 1)
    expected = np.exp(-1.0 / (4.0 * length_scale**2))
    assert abs(neighbour_correlation(field) - expected) < 0.03


def test_smoothness_increases_with_length_scale():
    corr = [neighbour_correlation(gaussian_random_field((96, 96), s, 2)) for s in (0.5, 2.0, 8.0)]
    assert corr[0] < corr[1] < corr[2]


def test_fields_are_repeatable_and_accept_every_rng_kind():
    a = gaussian_random_field((16, 16), 3.0, np.random.RandomState(5))
    b = gaussian_random_field((16, 16), 3.0, np.random.RandomState(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        gaussian_random_field((16, 16), 3.0, 7),
        gaussian_random_field((16, 16), 3.0, np.random.default_rng(7)),
    )
    assert not np.array_equal(a, gaussian_random_field((16, 16), 3.0, np.random.RandomState(6)))
    with pytest.raises(ValueError, match="length_scale"):
        gaussian_random_field((8, 8), 0.0)


def test_rotation_vector_form_matches_scipy():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 5, 4))
    angles = rng.normal(scale=0.5, size=(3, 5, 4))
    angles[:, 0, 0] = 0.0  # the zero rotation must be safe
    rotated = _rotate(q, angles)
    for i, j in np.ndindex(5, 4):
        expected = Rotation.from_rotvec(angles[:, i, j]).apply(q[:, i, j])
        np.testing.assert_allclose(rotated[:, i, j], expected, atol=1e-12)
    # In 2D, angle theta turns axis 0 towards axis 1.
    np.testing.assert_allclose(
        _rotate(np.array([[1.0], [0.0]]), np.array([[np.pi / 2]])), [[0.0], [1.0]], atol=1e-12
    )


def test_affine_strength_zero_and_prob_zero_return_the_input_itself():
    img = torch.rand(2, 16, 16)
    assert RandFieldAffine(strength=0.0)(img) is img
    assert RandFieldAffine(prob=0.0)(img) is img
    assert RandFieldIntensity(strength=0.0)(img) is img
    assert RandFieldIntensity(prob=0.0)(img) is img


@pytest.mark.parametrize("shape", [(2, 20, 16), (1, 12, 10, 8)])
def test_affine_keeps_shape_and_type_in_2d_and_3d(shape):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    warp = RandFieldAffine(strength=1.0, length_scale=4.0).set_random_state(0)
    out = warp(img)
    assert isinstance(out, np.ndarray) and out.shape == shape and out.dtype == np.float32
    assert warp.displacement.shape == (len(shape) - 1, *shape[1:])
    assert np.abs(out - img).mean() > 0.01
    out_t = warp(torch.from_numpy(img))
    assert isinstance(out_t, torch.Tensor) and out_t.shape == shape


def test_affine_is_repeatable_with_a_seed_and_varies_across_seeds():
    img = torch.rand(1, 24, 24)
    first = RandFieldAffine(length_scale=6.0).set_random_state(3)(img)
    again = RandFieldAffine(length_scale=6.0).set_random_state(3)(img)
    other = RandFieldAffine(length_scale=6.0).set_random_state(4)(img)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - other).abs().mean() > 0.01


@pytest.mark.parametrize("shape", [(1, 6, 7), (1, 5, 6, 7)])
def test_displacement_is_in_voxels_along_array_axes(shape):
    """A displacement of +1 voxel along the first spatial axis samples the next voxel."""
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    warp = RandFieldAffine()
    warp.displacement = np.zeros((len(shape) - 1, *shape[1:]))
    warp.displacement[0] = 1.0
    out = warp(img, randomize=False)
    np.testing.assert_allclose(out[:, :-1], img[:, 1:], atol=1e-5)
    np.testing.assert_allclose(out[:, -1], img[:, -1], atol=1e-5)  # border padding


def test_long_length_scale_gives_a_global_shift_and_rotation_fixes_the_centre():
    shift_only = RandFieldAffine(length_scale=1e4, rotation=0.0, scale=0.0).set_random_state(0)
    shift_only.randomize((15, 15))
    spread = shift_only.displacement.reshape(2, -1).std(axis=1)
    assert spread.max() < 1e-3 and np.abs(shift_only.displacement).mean() > 0.1
    rotate_only = RandFieldAffine(length_scale=4.0, shift=0.0, scale=0.0).set_random_state(0)
    rotate_only.randomize((15, 15))
    np.testing.assert_allclose(rotate_only.displacement[:, 7, 7], [0.0, 0.0], atol=1e-12)
    assert np.abs(rotate_only.displacement).max() > 0.1


def test_tiny_strength_is_nearly_the_identity():
    img = torch.rand(1, 10, 9, 8)
    out = RandFieldAffine(strength=1e-6).set_random_state(0)(img)
    torch.testing.assert_close(out, img, atol=1e-4, rtol=0)


def test_nearest_mode_keeps_label_values_and_dtype():
    label = torch.randint(0, 4, (1, 16, 16))
    out = RandFieldAffine(mode="nearest").set_random_state(1)(label)
    assert out.dtype == torch.int64
    assert set(out.unique().tolist()) <= {0, 1, 2, 3}


def test_dict_affine_applies_the_same_field_to_image_and_label():
    img = np.random.default_rng(0).random((1, 16, 12, 8)).astype(np.float32)
    warp = RandFieldAffined(["image", "label"], length_scale=4.0).set_random_state(2)
    out = warp({"image": img, "label": img.copy(), "id": 1})
    np.testing.assert_array_equal(out["image"], out["label"])
    assert np.abs(out["image"] - img).mean() > 0.01 and out["id"] == 1
    label = (img > 0.5).astype(np.int64)
    per_key = RandFieldAffined(["image", "label"], mode=("bilinear", "nearest")).set_random_state(2)
    out = per_key({"image": img, "label": label})
    assert out["label"].dtype == np.int64 and set(np.unique(out["label"])) <= {0, 1}


def test_intensity_applies_gain_and_offset_fields():
    img = torch.rand(3, 32, 32)
    transform = RandFieldIntensity(strength=1.0, length_scale=2.0).set_random_state(0)
    out = transform(img)
    assert transform.gain.shape == transform.offset.shape == (1, 32, 32)
    expected = img * torch.from_numpy(transform.gain) + torch.from_numpy(transform.offset)
    torch.testing.assert_close(out, expected)
    # log gain = 0.3 * strength * g and offset = 0.1 * strength * g with g of unit std.
    assert abs(float(np.log(transform.gain).std()) - 0.3) < 0.05
    assert abs(float(transform.offset.std()) - 0.1) < 0.02


def test_intensity_channel_wise_draws_one_field_per_channel():
    img = np.ones((3, 16, 16), dtype=np.float32)
    shared = RandFieldIntensity(length_scale=3.0).set_random_state(0)(img)
    np.testing.assert_array_equal(shared[0], shared[1])
    separate = RandFieldIntensity(length_scale=3.0, channel_wise=True).set_random_state(0)(img)
    assert np.abs(separate[0] - separate[1]).mean() > 0.01


def test_intensity_is_repeatable_and_dict_form_shares_the_field():
    img = torch.rand(1, 12, 10, 8)
    first = RandFieldIntensity(length_scale=3.0).set_random_state(9)(img)
    again = RandFieldIntensity(length_scale=3.0).set_random_state(9)(img)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    both = RandFieldIntensityd(["a", "b"], length_scale=3.0).set_random_state(9)
    out = both({"a": img, "b": img.clone()})
    torch.testing.assert_close(out["a"], out["b"], rtol=0, atol=0)
    assert RandFieldIntensityd("a", strength=0.0)({"a": img})["a"] is img
