import pytest
import torch

from medfm.config import load_config
from medfm.models.backbones import create_backbone
from medfm.models.pos_embed import sincos_3d
from medfm.ssl.mae import MAE, gradient_magnitude
from medfm.ssl.objectives import build_objective
from medfm.ssl.patches import patchify, patchify3d

BASE = ["model.depth=1", "data.image_size=16", "model.patch_size=4", "ssl.decoder_depth=1"]


def _mae(name="vit3d_tiny", *extra):
    cfg = load_config(None, [f"model.name={name}", *BASE, *extra])
    encoder = create_backbone(cfg.model, 16, cfg.data.channels, cfg.data.depth_size)
    return build_objective(encoder, cfg.ssl)


def _missing_grads(module):
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]


def test_patchify3d_order_keeps_every_voxel_once():
    volumes = torch.randn(2, 3, 8, 12, 16)
    patches = patchify(volumes, 4)
    assert patches.shape == (2, 2 * 3 * 4, 4**3 * 3)
    torch.testing.assert_close(patches, patchify3d(volumes, 4))
    # patch 1 is one step along W; pixel (o, p, q, c) is at ((o * 4 + p) * 4 + q) * C + c
    assert patches[0, 1, 0] == volumes[0, 0, 0, 0, 4]
    assert patches[1, 0, ((1 * 4 + 2) * 4 + 3) * 3 + 2] == volumes[1, 2, 1, 2, 3]
    assert torch.equal(patches.flatten().sort().values, volumes.flatten().sort().values)
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.rand(1, 1, 6, 8, 8), 4)


@pytest.mark.parametrize("gradient_target", [False, True])
def test_mae3d_finite_loss_and_every_parameter_gets_a_gradient(gradient_target):
    torch.manual_seed(0)
    mae = _mae("vit3d_tiny", f"ssl.gradient_target={gradient_target}")
    out = mae({"image": torch.rand(2, 1, 16, 16, 16)})
    assert torch.isfinite(out["loss"])
    assert out["mask_fraction"].item() == pytest.approx(0.75)
    assert ("loss_gradient" in out) == gradient_target
    out["loss"].backward()
    assert _missing_grads(mae) == []


def test_mae3d_decoder_uses_3d_sincos_and_predicts_cubes():
    mae = _mae()
    assert mae.grid == (4, 4, 4) and mae.decoder_pred.out_features == 4**3
    torch.testing.assert_close(mae.decoder_pos[0], sincos_3d(128, 4, 4, 4))


def test_mae3d_encoder_sees_only_visible_patches_and_masking_ratio_is_exact():
    torch.manual_seed(0)
    mae = _mae()
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    volumes = torch.rand(3, 1, 16, 16, 16)
    latent, mask, ids_restore = mae.forward_encoder(volumes)
    # 64 patches at 75 % masking -> 16 visible + 1 class token
    assert seen == [torch.Size([3, 17, 192])]
    assert latent.shape == (3, 17, 192)
    assert mask.sum(dim=1).tolist() == [48.0, 48.0, 48.0]
    target = patchify(volumes, 4)
    perfect_on_masked = torch.where(mask.bool().unsqueeze(-1), target, target + 100.0)
    mae.norm_pix_loss = False
    assert mae.forward_loss(volumes, perfect_on_masked, mask).item() == 0.0
    assert mae.decode(latent, ids_restore).shape == (3, 64, 128)  # every patch, decoder width


def test_gradient_magnitude_of_constant_is_zero_and_of_ramp_is_constant():
    assert gradient_magnitude(torch.full((2, 3, 8, 8), 5.0)).abs().max() == 0
    assert gradient_magnitude(torch.full((1, 1, 4, 8, 8), -2.0)).abs().max() == 0
    ramp_2d = 0.5 * torch.arange(8.0).reshape(1, 1, 1, 8).expand(2, 1, 8, 8)
    torch.testing.assert_close(gradient_magnitude(ramp_2d), torch.full((2, 1, 8, 8), 0.5))
    d, h, w = torch.meshgrid(torch.arange(4.0), torch.arange(8.0), torch.arange(8.0), indexing="ij")
    ramp_3d = (2 * d + 3 * h - 6 * w).reshape(1, 1, 4, 8, 8)  # |(2, 3, -6)| = 7
    torch.testing.assert_close(gradient_magnitude(ramp_3d), torch.full_like(ramp_3d, 7.0))
    edge = torch.zeros(1, 1, 8, 8)
    edge[..., 4:] = 1.0  # a vertical step: non-zero next to the edge only
    magnitude = gradient_magnitude(edge)[0, 0]
    assert (magnitude[:, 3:5] > 0).all() and magnitude[:, :3].eq(0).all()


def test_gradient_target_loss_terms_are_reported_and_weighted():
    torch.manual_seed(0)
    mae = _mae("vit3d_tiny", "ssl.gradient_target=true", "ssl.gradient_weight=0.5")
    assert isinstance(mae, MAE) and mae.decoder_pred_gradient.out_features == 4**3
    out = mae({"image": torch.rand(2, 1, 16, 16, 16)})
    assert {"loss", "loss_mae", "loss_pixel", "loss_gradient", "mask_fraction"} <= set(out)
    assert torch.isfinite(out["loss_gradient"]) and out["loss_gradient"].ndim == 0
    expected = out["loss_pixel"] + 0.5 * out["loss_gradient"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    # on a constant volume the gradient target is 0, so the gradient loss is the head's own output
    mae.norm_pix_loss = False
    flat = torch.full((1, 1, 16, 16, 16), 0.3)
    latent, mask, ids_restore = mae.forward_encoder(flat)
    pred = mae.decoder_pred_gradient(mae.decode(latent, ids_restore))
    loss = mae.forward_gradient_loss(flat, pred, mask)
    expected = ((pred**2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)


def test_gradient_target_on_a_2d_timm_encoder():
    torch.manual_seed(0)
    mae = _mae("vit_tiny_patch16_224", "ssl.gradient_target=true")
    out = mae({"image": torch.rand(2, 1, 16, 16)})
    assert torch.isfinite(out["loss"]) and "loss_gradient" in out
    out["loss"].backward()
    assert _missing_grads(mae) == []


def test_unified_encoder_trains_on_2d_and_3d_batches_with_the_same_weights():
    torch.manual_seed(0)
    mae = _mae("unified_tiny", "ssl.gradient_target=true")
    blocks = mae.encoder.blocks
    opt = torch.optim.SGD(mae.parameters(), lr=0.1)
    batches = {2: torch.rand(2, 1, 16, 16), 3: torch.rand(2, 1, 16, 16, 16)}
    for dims, images in batches.items():
        before = blocks[0].attn.qkv.weight.detach().clone()
        opt.zero_grad(set_to_none=True)
        out = mae({"image": images})
        assert torch.isfinite(out["loss"]) and "loss_gradient" in out
        out["loss"].backward()
        grads = {n for n, p in mae.named_parameters() if p.grad is not None}
        own, other = ("proj_2d", "proj") if dims == 2 else ("proj", "proj_2d")
        assert f"encoder.patch_embed.{own}.weight" in grads
        assert f"encoder.patch_embed.{other}.weight" not in grads
        assert "encoder.blocks.0.attn.qkv.weight" in grads  # the shared transformer
        assert ("decoder_pred_2d.weight" in grads) == (dims == 2)
        opt.step()
        assert not torch.equal(before, blocks[0].attn.qkv.weight)
    assert mae.decoder_pred_2d.out_features == 4**2 and mae.decoder_pred.out_features == 4**3


def test_3d_only_mae_rejects_a_2d_batch_clearly():
    mae = _mae()
    with pytest.raises(ValueError, match="unified=True"):
        mae({"image": torch.rand(1, 1, 16, 16)})
