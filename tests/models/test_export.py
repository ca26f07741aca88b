import argparse
import json

import pytest
import timm
import torch
from monai.networks.nets import ViT
from safetensors.torch import load_file

from medfm.cli import export_cmd
from medfm.config import ConfigError, load_config
from medfm.models import create_backbone, encode, save_encoder
from medfm.models.export import ExportError, export_encoder

BASE_2D = ["model.depth=1", "data.image_size=32", "model.patch_size=8"]
BASE_3D = ["model.depth=1", "data.image_size=16", "model.patch_size=4"]


def _saved(run_dir, *overrides):
    torch.manual_seed(0)
    cfg = load_config(None, list(overrides))
    model = create_backbone(
        cfg.model, cfg.data.image_size, cfg.data.channels, cfg.data.get("depth_size")
    ).eval()
    save_encoder(model, cfg, run_dir)
    return model, cfg


def test_timm_export_rebuilds_in_plain_timm_with_equal_features(tmp_path):
    model, cfg = _saved(tmp_path / "run", *BASE_2D)
    weights, config = export_encoder(tmp_path / "run", "timm", tmp_path / "out")
    assert weights == tmp_path / "out" / "model.safetensors" and config.name == "config.json"
    meta = json.loads(config.read_text())
    assert meta["architecture"] == cfg.model.name
    assert meta["kwargs"] == {
        "img_size": 32,
        "in_chans": cfg.data.channels,
        "patch_size": 8,
        "num_classes": 0,
        "depth": 1,
    }
    state = load_file(str(weights))
    # the frozen sin-cos table travels with the weights (timm would init it randomly)
    torch.testing.assert_close(state["pos_embed"], model.pos_embed.detach(), rtol=0, atol=0)
    plain = timm.create_model(meta["architecture"], pretrained=False, **meta["kwargs"]).eval()
    assert type(plain) is type(model)
    assert not torch.equal(plain.pos_embed, model.pos_embed)  # before loading: a different table
    plain.load_state_dict(state, strict=True)
    x = torch.randn(2, cfg.data.channels, 32, 32)
    with torch.no_grad():
        ours, theirs = model.forward_features(x), plain.forward_features(x)
        assert ours.shape == (2, 1 + 16, model.embed_dim)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
        torch.testing.assert_close(encode(plain, x), encode(model, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["vit3d_tiny", "unified_tiny"])
def test_monai_export_loads_into_monai_vit_with_equal_features(tmp_path, name):
    model, cfg = _saved(tmp_path / "run", f"model.name={name}", *BASE_3D)
    weights, config = export_encoder(tmp_path / "run", "monai", tmp_path / "out")
    meta = json.loads(config.read_text())
    assert meta["architecture"] == "monai.networks.nets.ViT"
    kwargs = meta["kwargs"]
    assert kwargs["img_size"] == [16, 16, 16] and kwargs["patch_size"] == 4
    assert kwargs["num_layers"] == 1 and kwargs["hidden_size"] == 192
    assert kwargs["classification"] is True  # medfm's 3D encoders have a class token
    state = load_file(str(weights))
    assert not any("2d" in k for k in state)  # a unified encoder's 2D kernel is dropped
    monai = ViT(**kwargs).eval()
    result = monai.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == [
        "classification_head.0.bias",
        "classification_head.0.weight",
    ]
    x = torch.randn(2, cfg.data.channels, 16, 16, 16)
    with torch.no_grad():
        _, hidden = monai(x)
        ours = model.forward_features(x)
        assert ours.shape == (2, 1 + 4**3, 192)
        torch.testing.assert_close(monai.norm(hidden[-1]), ours, rtol=0, atol=1e-5)
        torch.testing.assert_close(monai.norm(hidden[-1])[:, 1:].mean(1), encode(model, x))


def test_conv_stem_is_a_clear_error(tmp_path):
    _saved(tmp_path / "run", *BASE_2D, "model.stem=conv")
    for to in ("timm", "monai"):
        with pytest.raises(ExportError, match="model.stem=conv.*ConvStem.*load_encoder"):
            export_encoder(tmp_path / "run", to, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_target_is_a_clear_error(tmp_path):
    _saved(tmp_path / "2d", *BASE_2D)
    _saved(tmp_path / "3d", "model.name=vit3d_tiny", *BASE_3D)
    with pytest.raises(ExportError, match="2D timm encoder.*--to timm"):
        export_encoder(tmp_path / "2d", "monai", tmp_path / "out")
    with pytest.raises(ExportError, match="3D encoder.*--to monai"):
        export_encoder(tmp_path / "3d", "timm", tmp_path / "out")
    with pytest.raises(ExportError, match="use one of timm, monai"):
        export_encoder(tmp_path / "2d", "onnx", tmp_path / "out")
    assert issubclass(ExportError, ConfigError)  # `medfm` prints it and exits with status 2
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="No encoder artifact"):
        export_encoder(tmp_path / "missing", "timm", tmp_path / "out")


def test_cli_run_writes_both_files(tmp_path, capsys):
    _saved(tmp_path / "run", *BASE_2D)
    parser = argparse.ArgumentParser()
    export_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["export", str(tmp_path / "run"), "--to", "timm", "--out", str(tmp_path / "out")]
    )
    assert args.run(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert "model.safetensors" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "x", "--to", "onnx", "--out", "y"])
