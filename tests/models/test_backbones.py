import pytest
import timm
import torch
from safetensors.torch import load_file

from medfm.config import load_config
from medfm.models import create_backbone, encode, load_encoder, save_encoder
from medfm.models.backbones import encode_layers
from medfm.models.encoder_io import load_encoder_config
from medfm.models.pos_embed import sincos_2d


@pytest.fixture()
def cfg():
    return load_config(None, ["model.depth=2", "data.image_size=16"])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encode_shapes_finite_and_gradients(cfg, channels, pooling):
    model = create_backbone(cfg.model, 16, channels)
    x = torch.rand(3, channels, 16, 16)
    feats = encode(model, x, pooling)
    assert feats.shape == (3, 192)
    assert torch.isfinite(feats).all()
    feats.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_pos_embed_is_fixed_sincos(cfg):
    model = create_backbone(cfg.model, 16, 1)
    assert not model.pos_embed.requires_grad
    grid = model.patch_embed.grid_size
    expected = torch.cat([torch.zeros(1, 192), sincos_2d(192, *grid)]).unsqueeze(0)
    torch.testing.assert_close(model.pos_embed.data, expected)


def test_sincos_values():
    emb = sincos_2d(8, 2, 3)
    assert emb.shape == (6, 8)
    # patch (row 0, col 0): sin(0)=0, cos(0)=1 for both halves
    torch.testing.assert_close(emb[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
    # patch (row 1, col 2): first half encodes row 1, second half column 2 at frequency 1
    assert emb[5, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert emb[5, 4].item() == pytest.approx(torch.sin(torch.tensor(2.0)).item())


def test_unknown_backbone_and_pooling(cfg):
    bad = load_config(None, ["model.name=resnet50"]).model
    with pytest.raises(ValueError, match="not a timm ViT"):
        create_backbone(bad, 16, 1)
    with pytest.raises(ValueError, match="pooling"):
        encode(create_backbone(cfg.model, 16, 1), torch.rand(1, 1, 16, 16), "max")


def test_backbones_are_registered_by_name_and_typos_name_the_nearest():
    from medfm.models.backbones import BACKBONES

    assert {"vit_tiny_patch16_224", "vit3d_tiny", "unified_base"} <= set(BACKBONES.names())
    assert set(timm.list_models("vit_*")) <= set(BACKBONES.names())
    typo = load_config(None, ["model.name=vit_tiny_patch16_244"]).model
    with pytest.raises(ValueError, match="nearest valid name is 'vit_tiny_patch16_224'"):
        create_backbone(typo, 16, 1)


def test_encoder_round_trip_and_plain_timm_load(cfg, tmp_path):
    torch.manual_seed(0)
    model = create_backbone(cfg.model, 16, 1).eval()
    save_encoder(model, cfg, tmp_path)
    loaded, loaded_cfg = load_encoder(tmp_path / "encoder.safetensors")
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(encode(loaded, x), encode(model, x), rtol=0, atol=0)
    # the documented mapping: keys are timm's own, so a plain timm model loads them strictly
    meta = load_encoder_config(tmp_path).encoder
    plain = timm.create_model(meta.timm_name, pretrained=False, **meta.timm_kwargs).eval()
    plain.load_state_dict(load_file(str(tmp_path / "encoder.safetensors")), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.forward_features(x), model.forward_features(x))
    assert loaded_cfg.model.depth == 2


def test_random_init_differs_and_missing_artifact_is_clear(cfg, tmp_path):
    model = create_backbone(cfg.model, 16, 1)
    save_encoder(model, cfg, tmp_path)
    rand, _ = load_encoder(tmp_path, random_init=True)
    assert not torch.equal(rand.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    with pytest.raises(FileNotFoundError, match="encoder.safetensors"):
        load_encoder(tmp_path / "elsewhere")


def test_pretrained_loads_only_from_a_local_file_and_adapts_sizes(cfg, tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=5)
    weights = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(weights, str(tmp_path / "w.safetensors"))
    model_cfg = load_config(None, ["model.depth=2", f"model.pretrained={tmp_path}/w.safetensors"])
    model = create_backbone(model_cfg.model, 16, 3)  # 16 px, patch 4: kernel and grid resampled
    assert model.patch_embed.proj.weight.shape == (192, 3, 4, 4)
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    missing = load_config(None, ["model.pretrained=/nonexistent/w.safetensors"]).model
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        create_backbone(missing, 16, 3)


def test_rgb_weights_load_into_a_grey_scale_backbone_summed_over_channels(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32)
    weights = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(weights, str(tmp_path / "rgb.safetensors"))
    model_cfg = load_config(
        None,
        ["model.depth=1", "model.patch_size=16", f"model.pretrained={tmp_path}/rgb.safetensors"],
    ).model
    grey = create_backbone(model_cfg, 32, 1)
    expected = source.patch_embed.proj.weight.sum(dim=1, keepdim=True)
    torch.testing.assert_close(grey.patch_embed.proj.weight, expected)
    torch.testing.assert_close(grey.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit3d_tiny"])
def test_last_blocks_are_each_normed_pooled_and_concatenated_earliest_first(name):
    model = create_backbone({"name": name, "depth": 3, "patch_size": 4}, 8, 1, 8).eval()
    x = torch.rand(2, 1, *([8] * (3 if name.startswith("vit3d") else 2)))
    with torch.no_grad():
        got = encode_layers(model, x, "mean", "last2")
        # by hand: the blocks one by one from the embedded tokens, each normed and pooled
        h = model.forward_features.__self__  # the same module
        kept: list = []
        for i, block in enumerate(h.blocks):
            block.register_forward_hook(lambda m, inp, out, i=i: kept.append((i, out)))
        model.forward_features(x)
        kept = [out for i, out in kept if i >= len(h.blocks) - 2]
        prefix = model.num_prefix_tokens
        expected = torch.cat([model.norm(t)[:, prefix:].mean(1) for t in kept], dim=1)
    assert got.shape == (2, 2 * model.embed_dim)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[:, model.embed_dim :], encode(model, x, "mean"))
    assert torch.equal(encode_layers(model, x, "cls", "last"), encode(model, x, "cls"))


def test_a_bad_block_choice_names_the_valid_ones():
    model = create_backbone({"name": "vit_tiny_patch16_224", "depth": 2, "patch_size": 4}, 8, 1)
    with pytest.raises(ValueError, match="use 'last'"):
        encode_layers(model, torch.rand(1, 1, 8, 8), "mean", "first4")
    with pytest.raises(ValueError, match="at least 4 blocks"):
        encode_layers(model, torch.rand(1, 1, 8, 8), "mean", "last4")
