"""Tests for medfm.models.conv_stem: shapes, the artifact round trip, gradients through SimCLR."""

import pytest
import torch

from medfm.config import load_config
from medfm.models.backbones import create_backbone
from medfm.models.conv_stem import ConvStem
from medfm.models.encoder_io import load_encoder, save_encoder
from medfm.ssl import build_objective


def _cfg(*extra):
    return load_config(None, ["model.stem=conv", "model.depth=1", "data.image_size=28", *extra])


def test_conv_stem_downsamples_by_the_patch_size_into_the_same_tokens():
    stem = ConvStem(1, 192, 4)
    assert stem(torch.rand(2, 1, 28, 28)).shape == (2, 192, 7, 7)
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in stem) == 2
    model = create_backbone(_cfg().model, 28, 1)
    assert isinstance(model.patch_embed.proj, ConvStem)
    assert model.forward_features(torch.rand(3, 1, 28, 28)).shape == (3, 50, 192)
    with pytest.raises(ValueError, match="power-of-two"):
        ConvStem(1, 192, 6)
    with pytest.raises(ValueError, match="model.stem"):
        create_backbone(_cfg("model.stem=hexagon").model, 28, 1)


def test_conv_stem_encoder_round_trips_through_the_artifact(tmp_path):
    cfg = _cfg("data.channels=1")
    torch.manual_seed(0)
    model = create_backbone(cfg.model, 28, 1)
    model.patch_embed.proj[1].running_mean.fill_(0.3)  # BN statistics travel too
    save_encoder(model, cfg, tmp_path)
    loaded, _ = load_encoder(tmp_path)
    x = torch.rand(2, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(loaded.forward_features(x), model.forward_features(x))


@pytest.mark.parametrize("objective", ["simclr", "hybrid"])
def test_every_stem_parameter_gets_a_gradient(objective):
    cfg = _cfg(f"ssl.objective={objective}")
    torch.manual_seed(0)
    obj = build_objective(create_backbone(cfg.model, 28, 1), cfg.ssl)
    obj({"image": torch.rand(4, 1, 28, 28), "sample_seed": torch.arange(4)})["loss"].backward()
    for name, p in obj.named_parameters():
        if p.requires_grad and "patch_embed.proj" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_conv_stem_encoder_loads_into_timm_after_use_conv_stem(tmp_path):
    import timm
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from medfm.models.conv_stem import use_conv_stem

    cfg = _cfg("data.channels=1")
    save_encoder(create_backbone(cfg.model, 28, 1), cfg, tmp_path)
    saved = OmegaConf.load(tmp_path / "config.yaml").encoder
    plain = timm.create_model(saved.timm_name, **saved.timm_kwargs)
    use_conv_stem(plain).load_state_dict(load_file(str(tmp_path / "encoder.safetensors")))
