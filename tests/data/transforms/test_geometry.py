"""Tests for medfm.data.transforms.geometry: 2D slices of volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medfm.data.transforms.geometry import CenterSlice


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


def test_slicing_refuses_2d_images_and_bad_axes():
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        CenterSlice()(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="axis"):
        CenterSlice(axis=3)(np.zeros((1, 4, 4, 4)))


def test_center_slice_step_keeps_other_keys_and_drops_the_affine():
    from medfm.data.transforms.preprocess import build_step

    vol = MetaTensor(torch.from_numpy(volume((1, 4, 5, 6))), affine=torch.eye(4))
    step = build_step(0, {"name": "center_slice", "axis": 0})
    out = step({"image": vol, "id": "a"})
    assert type(out["image"]) is torch.Tensor and out["id"] == "a"
    torch.testing.assert_close(out["image"], vol.as_tensor()[:, 2])
