"""Tests for medfm.data.transforms.geometry: spacing and RAS orientation, slices of volumes, fixed
sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medfm.data.transforms.geometry import (
    CenterSlice,
    CenterSliced,
    RandSliceSample,
    RandSliceSampled,
    crop_pad_resize,
    resample_to_spacing_ras,
)


def volume(shape: tuple[int, ...] = (1, 4, 5, 6)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_resampling_2mm_to_1mm_doubles_the_shape_and_keeps_the_field_of_view():
    ramp = torch.arange(4.0).reshape(1, 4, 1, 1).expand(1, 4, 4, 4).clone()
    img = MetaTensor(ramp, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = resample_to_spacing_ras("image", (1.0, 1.0, 1.0))({"image": img})["image"]
    assert out.shape == (1, 8, 8, 8)
    np.testing.assert_allclose(out.affine[:3, :3].numpy(), np.eye(3))
    # Voxel edges stay put: the first 1 mm voxel centre lies 0.5 mm before the first 2 mm centre.
    np.testing.assert_allclose(out.affine[:3, 3].numpy(), [-0.5, -0.5, -0.5])
    # Input voxel i (value i) sits at x = 2i; output voxel j at x = j - 0.5, value (j - 0.5) / 2.
    expected = np.clip((np.arange(8) - 0.5) / 2, 0, 3)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), expected, atol=1e-5)


def test_lps_volume_is_reoriented_to_ras():
    data = torch.from_numpy(volume((1, 2, 3, 4)))
    img = MetaTensor(data, affine=torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0])))
    out = resample_to_spacing_ras("image", 1.0)({"image": img})["image"]
    np.testing.assert_allclose(np.diag(out.affine.numpy())[:3], [1.0, 1.0, 1.0])
    torch.testing.assert_close(out.as_tensor(), torch.flip(data, dims=(1, 2)))


def test_labels_resampled_with_nearest_stay_labels():
    label = MetaTensor(
        torch.randint(0, 3, (1, 4, 4, 4)).float(), affine=torch.diag(torch.tensor([2.0] * 3 + [1]))
    )
    sample = {"image": label.clone(), "label": label}
    out = resample_to_spacing_ras(["image", "label"], 1.0, mode=("bilinear", "nearest"))(sample)
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0, 2.0}
    assert out["image"].shape == out["label"].shape == (1, 8, 8, 8)


def test_crop_pad_resize_keeps_the_aspect_ratio_and_pads_with_zeros():
    out = crop_pad_resize("image", (16, 16))({"image": torch.ones(1, 32, 16)})["image"]
    assert out.shape == (1, 16, 16)
    np.testing.assert_allclose(out[0, :, 4:12].numpy(), 1.0, atol=1e-6)
    assert out[0, :, :4].abs().max() == 0 and out[0, :, 12:].abs().max() == 0


def test_crop_pad_resize_area_mode_averages_pixel_blocks():
    img = torch.arange(16.0).reshape(1, 4, 4)
    out = crop_pad_resize("image", (2, 2))({"image": img})["image"]
    torch.testing.assert_close(out.as_tensor(), torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))


def test_crop_pad_resize_3d_and_nearest_labels():
    label = (torch.rand(1, 12, 12, 6) > 0.5).float()
    transform = crop_pad_resize(["image", "label"], (8, 8, 8), mode=("trilinear", "nearest"))
    out = transform({"image": torch.rand(1, 12, 12, 6), "label": label})
    assert out["image"].shape == out["label"].shape == (1, 8, 8, 8)
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="2 or 3"):
        crop_pad_resize("image", (8,))


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
    out = CenterSliced(["image", "label"], axis=1)({"image": vol, "label": vol})
    np.testing.assert_array_equal(out["image"], vol[:, :, 2])
    np.testing.assert_array_equal(out["label"], out["image"])
