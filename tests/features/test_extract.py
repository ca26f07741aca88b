"""Feature extraction: batches of one shape, a mixed 2D + 3D dataset embedded in its order."""

import numpy as np
import pytest
import torch

from medfm.evaluation.sources import pixel_features
from medfm.features.extract import extract_features
from medfm.models.backbones import create_backbone, encode


@pytest.fixture
def mixed():
    gen = torch.Generator().manual_seed(0)
    shapes = [(1, 16, 16), (1, 16, 16), (1, 8, 16, 16), (1, 16, 16), (1, 8, 16, 16)]
    return [{"image": torch.rand(s, generator=gen)} for s in shapes]


def test_a_mixed_dataset_gives_each_image_its_own_features_in_order(mixed):
    model = create_backbone({"name": "unified_tiny", "depth": 1, "patch_size": 8}, 16, 1, 8)
    model.eval()
    feats = extract_features(model, mixed, batch_size=2, progress=False)
    with torch.no_grad():
        alone = np.concatenate([encode(model, s["image"][None]).numpy() for s in mixed])
    assert feats.shape == (5, model.embed_dim)
    np.testing.assert_allclose(feats, alone, rtol=1e-5, atol=1e-6)


def test_pixel_baseline_pools_each_image_and_refuses_mixed_shapes(mixed):
    same = [{"image": torch.arange(2 * 128 * 64.0).reshape(2, 128, 64)}] * 3
    pixels = pixel_features(same)
    assert pixels.shape == (3, 2 * 64 * 32)  # halved once: 16384 -> 4096 values
    expected = torch.nn.functional.avg_pool2d(same[0]["image"], 2).flatten().numpy()
    np.testing.assert_array_equal(pixels[1], expected)
    with pytest.warns(UserWarning, match="differ in shape"):
        assert pixel_features(mixed) is None


def test_the_block_choice_is_part_of_the_cache_key(tmp_path):
    from omegaconf import OmegaConf

    from medfm.features.encoders import EvalEncoder
    from medfm.features.extract import encoder_features

    def build():
        torch.manual_seed(0)
        return create_backbone({"name": "vit_tiny_patch16_224", "depth": 4, "patch_size": 4}, 8, 1)

    cfg = OmegaConf.create({"model": {"pooling": "mean"}, "data": {"image_size": 8}})
    enc = EvalEncoder("tiny", build, cfg, key="k")
    data = [{"image": torch.rand(1, 8, 8)} for _ in range(3)]
    rows = [{"path": f"/nowhere/{i}.png"} for i in range(3)]
    last = encoder_features(enc, rows, data, tmp_path, False)
    last4 = encoder_features(enc, rows, data, tmp_path, False, features="last4")
    assert last.shape == (3, 192) and last4.shape == (3, 4 * 192)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # two entries, neither read for the other
    np.testing.assert_allclose(last4[:, -192:], last, rtol=1e-5, atol=1e-6)
