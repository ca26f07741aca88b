import pytest
import torch
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.networks.nets import ViT
from safetensors.torch import load_file

from medfm.config import load_config
from medfm.models import create_backbone, encode, load_encoder, save_encoder
from medfm.models.backbones import SIZES
from medfm.models.encoder_io import load_encoder_config
from medfm.models.patch_embed import UnifiedPatchEmbed
from medfm.models.pos_embed import sincos_1d, sincos_2d, sincos_3d
from medfm.models.vit3d import ViT3D, to_monai_state_dict

BASE = ["model.depth=1", "data.image_size=16", "model.patch_size=4"]


def _cfg(name="vit3d_tiny", *extra):
    return load_config(None, [f"model.name={name}", *BASE, *extra])


def _build(cfg):
    return create_backbone(cfg.model, cfg.data.image_size, cfg.data.channels, cfg.data.depth_size)


def _missing_grads(model):
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("name", ["vit3d_tiny", "unified_tiny"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_3d_shapes_finite_and_every_parameter_gets_a_gradient(name, pooling):
    torch.manual_seed(0)
    model = _build(_cfg(name))
    volumes = torch.rand(2, 1, 16, 16, 16)
    tokens = model.forward_features(volumes)
    assert tokens.shape == (2, 1 + 4**3, 192)
    feats = encode(model, volumes, pooling)
    assert feats.shape == (2, 192) and torch.isfinite(feats).all()
    loss = feats.sum()
    if model.unified:  # the 2D kernel only learns from 2D images
        loss = loss + encode(model, torch.rand(2, 1, 16, 16), pooling).sum()
    loss.backward()
    assert _missing_grads(model) == []


def test_unified_takes_2d_images_through_the_same_blocks():
    torch.manual_seed(0)
    model = _build(_cfg("unified_tiny")).eval()
    images = torch.rand(3, 1, 16, 16)
    tokens = model.forward_features(images)
    assert tokens.shape == (3, 1 + 4**2, 192) and torch.isfinite(tokens).all()
    torch.testing.assert_close(model.pos_embed_2d[0, 1:], sincos_2d(192, 4, 4))
    torch.testing.assert_close(model.pos_embed_2d[0, 0], torch.zeros(192))
    # the same transformer: only the patch kernel differs between the two paths
    assert {n for n, _ in model.named_parameters() if "proj_2d" in n} == {
        "patch_embed.proj_2d.weight",
        "patch_embed.proj_2d.bias",
    }


def test_3d_only_encoder_and_wrong_sizes_are_clear_errors():
    model = _build(_cfg())
    with pytest.raises(ValueError, match="unified=True"):
        model.forward_features(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="data.image_size"):
        model.forward_features(torch.rand(1, 1, 16, 16, 12))
    with pytest.raises(ValueError, match="divisible"):
        ViT3D((16, 16, 18), 4)


def test_depth_size_and_named_sizes():
    model = _build(_cfg("vit3d_tiny", "data.depth_size=8"))
    assert model.img_size == (8, 16, 16) and model.patch_embed.grid_size == (2, 4, 4)
    assert model.forward_features(torch.rand(1, 1, 8, 16, 16)).shape == (1, 1 + 32, 192)
    for size, (dim, depth, heads) in SIZES.items():
        full = load_config(None, [f"model.name=vit3d_{size}", "model.depth=null", *BASE[1:]])
        vit = ViT3D(**{**_vit3d_kwargs(full), "depth": 1})  # build one block, check the recipe
        assert (vit.embed_dim, vit.num_heads) == (dim, heads)
        assert _vit3d_kwargs(full)["depth"] == depth
    with pytest.raises(ValueError, match="vit3d_tiny"):
        create_backbone(load_config(None, ["model.name=vit3d_huge"]).model, 16, 1)


def _vit3d_kwargs(cfg):
    from medfm.models.backbones import vit3d_kwargs

    return vit3d_kwargs(cfg.model, cfg.data.image_size, cfg.data.channels, cfg.data.depth_size)


def test_pos_embed_is_fixed_3d_sincos():
    model = _build(_cfg())
    assert not model.pos_embed.requires_grad
    expected = torch.cat([torch.zeros(1, 192), sincos_3d(192, 4, 4, 4)]).unsqueeze(0)
    torch.testing.assert_close(model.pos_embed.data, expected)


@pytest.mark.filterwarnings("ignore:torch.meshgrid")  # inside MONAI's table
def test_sincos_3d_properties():
    emb = sincos_3d(12, 2, 3, 4)
    assert emb.shape == (24, 12)
    # origin: sin(0) = 0, cos(0) = 1 in each of the three 4-channel blocks
    torch.testing.assert_close(emb[0], torch.tensor([0.0, 0.0, 1.0, 1.0] * 3))
    # patch (d=1, h=2, w=3) is row 1*12 + 2*4 + 3; each block encodes one coordinate only
    row = emb[1 * 12 + 2 * 4 + 3]
    for block, coord in enumerate([1, 2, 3]):
        expected = sincos_1d(4, torch.tensor([coord]))[0]
        torch.testing.assert_close(row[4 * block : 4 * block + 4], expected)
    assert len({tuple(r.tolist()) for r in sincos_3d(48, 3, 4, 5)}) == 60  # all positions differ
    # MONAI's table, for dim % 6 == 0, is ours with the first two axis blocks swapped
    ours, monai = sincos_3d(48, 2, 3, 4), build_sincos_position_embedding((2, 3, 4), 48, 3)[0]
    torch.testing.assert_close(torch.cat([ours[:, 16:32], ours[:, :16], ours[:, 32:]], 1), monai)
    # any even dim works (an MAE decoder of width 128): blocks of 44, 42, 42 channels
    wide = sincos_3d(128, 1, 1, 2)
    torch.testing.assert_close(wide[1, 44 + 42 :], sincos_1d(42, torch.tensor([1]))[0])
    with pytest.raises(ValueError, match="even"):
        sincos_3d(13, 2, 2, 2)


def test_inflated_3d_kernel_matches_the_2d_kernel_on_depth_constant_volumes():
    torch.manual_seed(0)
    embed = UnifiedPatchEmbed(2, 24, 4, img_size=8, depth_size=8, inflate=True)
    image = torch.rand(3, 2, 8, 8)
    volume = image.unsqueeze(2).expand(-1, -1, 8, -1, -1)  # every slice the same image
    tokens_3d, grid_3d = embed(volume)
    tokens_2d, grid_2d = embed(image)
    assert grid_3d == (2, 2, 2) and grid_2d == (2, 2)
    for depth_patch in range(2):
        torch.testing.assert_close(tokens_3d.reshape(3, 2, 4, 24)[:, depth_patch], tokens_2d)
    with pytest.raises(ValueError, match="no 2D kernel"):
        UnifiedPatchEmbed(1, 24, 4, 8, 8, with_2d=False, inflate=True)


def test_monai_vit_gives_the_same_hidden_states_without_class_token():
    torch.manual_seed(0)
    ours = ViT3D(16, 4, in_chans=2, embed_dim=48, depth=2, num_heads=3, class_token=False).eval()
    monai = ViT(**ours.monai_vit_kwargs()).eval()
    monai.load_state_dict(to_monai_state_dict(ours.state_dict()), strict=True)
    x = torch.randn(2, 2, 16, 16, 16)
    with torch.no_grad():
        out, hidden = monai(x)
        torch.testing.assert_close(out, ours.forward_features(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hidden[0], ours.blocks[0](ours.embed_patches(x)[0]))


def test_monai_vit_with_class_token_matches_our_forward_features():
    torch.manual_seed(0)
    ours = ViT3D((8, 16, 16), 4, embed_dim=48, depth=2, num_heads=3).eval()
    monai = ViT(**ours.monai_vit_kwargs(classification=True)).eval()
    state = to_monai_state_dict(ours.state_dict(), include_class_token=True)
    missing, unexpected = monai.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.startswith("classification_head.") for k in missing)
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        _, hidden = monai(x)
        torch.testing.assert_close(monai.norm(hidden[-1]), ours.forward_features(x))


def test_monai_mapping_skips_the_2d_kernel_and_rejects_foreign_keys():
    unified = ViT3D(8, 4, embed_dim=24, depth=1, num_heads=2, unified=True)
    mapped = to_monai_state_dict(unified.state_dict())
    assert not any("2d" in k for k in mapped)
    assert ViT(**unified.monai_vit_kwargs()).load_state_dict(mapped, strict=True)
    with pytest.raises(KeyError, match="head.weight"):
        to_monai_state_dict({"head.weight": torch.zeros(1)})


@pytest.mark.parametrize("name", ["vit3d_tiny", "unified_tiny"])
def test_encoder_round_trip_rebuilds_vit3d_and_loads_into_monai(name, tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(name)
    model = _build(cfg).eval()
    save_encoder(model, cfg, tmp_path)
    loaded, loaded_cfg = load_encoder(tmp_path / "encoder.safetensors")
    assert isinstance(loaded, ViT3D) and loaded.unified == (name == "unified_tiny")
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(encode(loaded, x), encode(model, x), rtol=0, atol=0)
    meta = load_encoder_config(tmp_path).encoder
    assert "timm_name" not in meta and meta.monai_vit_kwargs.img_size == [16, 16, 16]
    monai = ViT(**meta.monai_vit_kwargs)
    state = to_monai_state_dict(load_file(str(tmp_path / "encoder.safetensors")))
    monai.load_state_dict(state, strict=True)
    assert loaded_cfg.model.depth == 1


def test_encoder_round_trip_keeps_depth_size(tmp_path):
    cfg = _cfg("vit3d_tiny", "data.depth_size=8")
    save_encoder(_build(cfg), cfg, tmp_path)
    loaded, _ = load_encoder(tmp_path)
    assert loaded.img_size == (8, 16, 16)
