"""Tests for medfm.data.transforms.geometry: 2D slices of volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medfm.data.transforms.geometry import CenterSlice, RandSliceSample, RandSliceSampled


def volume(shape: tuple[int, ...] = (1, 4, 5, 6)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize(
    ("axis", "expected_shape"), [(-1, (2, 4, 5)), (0, (2, 5, 6)), (1, (2, 4, 6))]
)
def test_center_slice_takes_the_middle_slice(axis, expected_shape):
    vol = volume((2, 4, 5, 6))
    out = CenterSlice(axis)(vol)
    assert out.shape == expected_shape
    np.testing.assert_array_equal(
        out, np.take(vol, vol.shape[1 + axis % 3] // 2, axis=1 + axis % 3)
    )


def test_rand_slice_returns_the_input_slice_at_the_sampled_index():
    vol = volume((2, 4, 5, 6))
    sampler = RandSliceSample().set_random_state(0)
    indices = set()
    for _ in range(20):
        out = sampler(vol)
        assert out.shape == (2, 4, 5)
        np.testing.assert_array_equal(out, vol[..., sampler.index])
        indices.add(sampler.index)
    assert len(indices) > 2 and indices <= set(range(6))


def test_rand_slice_is_repeatable_with_a_seed():
    vol = torch.from_numpy(volume((1, 3, 3, 50)))
    first = [RandSliceSample().set_random_state(3)(vol) for _ in range(2)]
    torch.testing.assert_close(first[0], first[1])
    draws = [int(RandSliceSample().set_random_state(s)(vol)[0, 0, 0]) for s in range(10)]
    assert len(set(draws)) > 1


def test_rand_slice_without_transform_takes_the_centre_and_drops_the_affine():
    vol = MetaTensor(torch.from_numpy(volume((1, 4, 5, 6))), affine=torch.eye(4))
    out = RandSliceSample(axis=0, prob=0.0)(vol)
    assert type(out) is torch.Tensor
    torch.testing.assert_close(out, vol.as_tensor()[:, 2])


def test_slicing_refuses_2d_images_and_bad_axes():
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        CenterSlice()(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="axis"):
        CenterSlice(axis=3)(np.zeros((1, 4, 4, 4)))


def test_dict_slicers_take_the_same_slice_for_every_key():
    vol = volume((1, 4, 5, 30))
    sampler = RandSliceSampled(["image", "label"]).set_random_state(1)
    for _ in range(5):
        out = sampler({"image": vol, "label": 2 * vol, "id": "a"})
        np.testing.assert_array_equal(out["label"], 2 * out["image"])
        np.testing.assert_array_equal(out["image"], vol[..., sampler.sampler.index])
        assert out["id"] == "a"
