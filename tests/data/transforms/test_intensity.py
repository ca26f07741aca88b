"""Tests for medfm.data.transforms.intensity: HU windows, multi-window stacks, percentile and
z-scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medfm.data.transforms.intensity import (
    HU_WINDOWS,
    HounsfieldWindow,
    HounsfieldWindowd,
    MultiWindowStack,
    MultiWindowStackd,
    PercentileNormalize,
    PercentileNormalized,
    ZScoreNormalize,
    ZScoreNormalized,
)


def test_soft_tissue_window_maps_known_values_and_clips():
    hu = np.array([[-1000.0, -160.0, 40.0, 140.0, 240.0, 3000.0]])
    out = HounsfieldWindow("soft_tissue")(hu)
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 0.75, 1.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize("preset", sorted(HU_WINDOWS))
def test_every_preset_maps_its_window_edges_to_0_and_1(preset):
    level, width = HU_WINDOWS[preset]
    hu = np.array([[level - width / 2 - 1, level - width / 2, level, level + width / 2]])
    np.testing.assert_allclose(HounsfieldWindow(preset)(hu), [[0.0, 0.0, 0.5, 1.0]], atol=1e-6)


def test_presets_have_the_documented_level_and_width():
    assert HU_WINDOWS == {
        "soft_tissue": (40.0, 400.0),
        "lung": (-600.0, 1500.0),
        "bone": (400.0, 1800.0),
        "brain": (40.0, 80.0),
    }


def test_window_accepts_an_explicit_level_width_pair():
    out = HounsfieldWindow((0.0, 100.0))(np.array([[-50.0, 25.0, 50.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.75, 1.0]], atol=1e-6)


def test_unknown_preset_and_bad_width_raise_helpful_errors():
    with pytest.raises(KeyError, match="soft_tissue"):
        HounsfieldWindow("liver")
    with pytest.raises(ValueError, match="width"):
        HounsfieldWindow((40.0, 0.0))


def test_output_keeps_the_input_type_and_is_float32():
    hu = np.zeros((1, 4, 4), dtype=np.int16)
    out_np = HounsfieldWindow()(hu)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    out_t = HounsfieldWindow()(torch.zeros(1, 4, 4))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    out_mt = HounsfieldWindow()(MetaTensor(torch.zeros(1, 2, 2, 2), affine=affine))
    assert isinstance(out_mt, MetaTensor)
    torch.testing.assert_close(out_mt.affine, affine.double())


def test_multi_window_stack_gives_one_channel_per_window():
    ct = np.array([[[-1350.0, 40.0], [150.0, 1300.0]]])  # (1, 2, 2)
    out = MultiWindowStack(("soft_tissue", "lung", "bone"))(ct)
    assert out.shape == (3, 2, 2)
    # 40 HU: soft tissue 0.5; lung [-1350, 150]: 1390 / 1500; bone [-500, 1300]: 540 / 1800.
    np.testing.assert_allclose(out[:, 0, 1], [0.5, 1390 / 1500, 540 / 1800], atol=1e-6)
    np.testing.assert_allclose(out[1], [[0.0, 1390 / 1500], [1.0, 1.0]], atol=1e-6)
    for channel, preset in enumerate(("soft_tissue", "lung", "bone")):
        np.testing.assert_array_equal(out[channel : channel + 1], HounsfieldWindow(preset)(ct))


def test_multi_window_stack_works_on_volumes_and_refuses_multichannel_input():
    vol = torch.linspace(-1000, 1000, 2 * 3 * 4).reshape(1, 2, 3, 4)
    assert MultiWindowStack(("brain", (0.0, 10.0)))(vol).shape == (2, 2, 3, 4)
    with pytest.raises(ValueError, match="one-channel"):
        MultiWindowStack()(torch.zeros(2, 4, 4))


def test_percentile_normalize_maps_the_percentiles_to_0_and_1():
    img = np.arange(101, dtype=np.float32).reshape(1, 101)  # percentile p is value p
    out = PercentileNormalize(lower=1, upper=99)(img)
    np.testing.assert_allclose(out[0, [0, 1, 50, 99, 100]], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    unclipped = PercentileNormalize(lower=1, upper=99, clip=False)(img)
    np.testing.assert_allclose(unclipped[0, [0, 100]], [-1 / 98, 99 / 98], atol=1e-6)


def test_percentile_normalize_channel_wise_uses_each_channels_range():
    img = np.stack([np.arange(101.0), 1000.0 + 10.0 * np.arange(101.0)]).reshape(2, 1, 101)
    out = PercentileNormalize(lower=10, upper=90, channel_wise=True)(img)
    np.testing.assert_allclose(out[:, 0, [10, 50, 90]], [[0, 0.5, 1], [0, 0.5, 1]], atol=1e-6)
    joint = PercentileNormalize(lower=10, upper=90)(img)
    assert joint[0].max() < 0.05  # without channel_wise, channel 0 is squeezed near 0


def test_percentile_normalize_rejects_bad_percentiles():
    with pytest.raises(ValueError, match="lower"):
        PercentileNormalize(lower=99, upper=1)


def test_zscore_gives_mean_0_std_1():
    img = np.random.default_rng(0).normal(5.0, 3.0, size=(1, 16, 16, 8))
    out = ZScoreNormalize()(img)
    assert abs(out.mean()) < 1e-5
    assert abs(out.std() - 1.0) < 1e-5


def test_zscore_leaves_its_input_untouched():
    img = np.array([[[0.0, 1.0], [2.0, 3.0]]], dtype=np.float32)
    ZScoreNormalize(nonzero=True)(img)
    ZScoreNormalize(nonzero=True)(torch.from_numpy(img))
    np.testing.assert_array_equal(img, [[[0.0, 1.0], [2.0, 3.0]]])


def test_zscore_nonzero_ignores_and_keeps_zero_background():
    rng = np.random.default_rng(1)
    img = np.zeros((1, 16, 16), dtype=np.float32)
    img[:, 4:12, 4:12] = rng.normal(100.0, 10.0, size=(1, 8, 8))
    out = ZScoreNormalize(nonzero=True)(img)
    foreground = img != 0
    assert np.all(out[~foreground] == 0.0)
    assert abs(out[foreground].mean()) < 1e-4
    assert abs(out[foreground].std() - 1.0) < 1e-4
    whole = ZScoreNormalize(nonzero=False)(img)
    assert abs(whole.mean()) < 1e-5 and np.all(whole[~foreground] < 0)


def test_zscore_channel_wise_normalises_each_channel():
    img = np.stack([np.arange(16.0), 100.0 * np.arange(16.0)]).reshape(2, 4, 4)
    out = ZScoreNormalize(channel_wise=True)(img)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), [0, 0], atol=1e-6)
    np.testing.assert_allclose(out.std(axis=(1, 2)), [1, 1], atol=1e-6)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_dict_forms_transform_only_their_keys():
    ct = np.array([[[-160.0, 40.0, 240.0]]])
    sample = {"image": ct, "label": np.array([[[0, 1, 2]]]), "id": "x"}
    out = HounsfieldWindowd("image", "soft_tissue")(sample)
    np.testing.assert_allclose(out["image"], [[[0.0, 0.5, 1.0]]], atol=1e-6)
    assert out["label"] is sample["label"] and out["id"] == "x"
    assert MultiWindowStackd("image")(sample)["image"].shape == (3, 1, 3)
    norm = PercentileNormalized("image", lower=0, upper=100)(sample)["image"]
    np.testing.assert_allclose(norm, [[[0.0, 0.5, 1.0]]], atol=1e-6)
    z = ZScoreNormalized("image")(sample)["image"]
    np.testing.assert_allclose(z, [[[-np.sqrt(1.5), 0.0, np.sqrt(1.5)]]], atol=1e-5)
