"""CAE (medfm.ssl.cae): what the encoder and the regressor see, the losses against a hand-written
reference, the EMA target, 2D and 3D, and the recipe."""

from pathlib import Path

import numpy as np
import pytest
import torch

from medfm.config import load_config
from medfm.models.backbones import create_backbone
from medfm.ssl.cae import CAE
from medfm.ssl.objectives import build_objective
from medfm.ssl.patches import patchify

TINY = ["model.depth=1", "data.image_size=16", "ssl.decoder_dim=32", "ssl.decoder_depth=1"]
RECIPE = Path(__file__).parents[2] / "configs" / "pretrain" / "cae_vit_tiny_2d.yaml"
CASES = [("vit_tiny_patch16_224", (4, 1, 16, 16), 16), ("vit3d_tiny", (2, 1, 16, 16, 16), 64)]


def _build(model="vit_tiny_patch16_224", extra=()):
    cfg = load_config(None, [*TINY, "ssl.objective=cae", f"model.name={model}", *extra])
    encoder = create_backbone(cfg.model, 16, 1, cfg.data.depth_size)
    return build_objective(encoder, cfg.ssl, cfg.model.pooling)


@pytest.mark.parametrize(("model", "shape", "n"), CASES, ids=["2d", "3d"])
def test_encoder_sees_the_visible_patches_and_the_regressor_the_masked_positions(model, shape, n):
    torch.manual_seed(0)
    cae = _build(model, ["ssl.mask_ratio=0.75", "ssl.cae_target=ema"])
    assert isinstance(cae, CAE)
    visible, masked = n // 4, n - n // 4
    seen = {}
    cae.encoder.blocks[0].register_forward_pre_hook(
        lambda m, args: seen.setdefault("encoder", []).append(args[0].shape[1])
    )
    cae.target.module.blocks[0].register_forward_pre_hook(
        lambda m, args: seen.setdefault("target", []).append(args[0].shape[1])
    )
    cae.regressor[0].register_forward_pre_hook(
        lambda m, args: seen.setdefault("regressor", []).append((args[0].shape, args[1].shape))
    )
    images, seeds = torch.rand(shape), torch.arange(shape[0])
    out = cae({"image": images, "sample_seed": seeds})
    assert seen["encoder"] == [1 + visible]  # the class token and the visible patches only
    assert seen["target"] == [1 + masked]  # the target encodes the masked patches alone
    (queries, context), d = seen["regressor"][0], cae.encoder.embed_dim
    assert tuple(queries) == (shape[0], masked, d) and tuple(context) == (shape[0], 1 + visible, d)
    assert float(out["mask_fraction"]) == 0.75
    out["loss"].backward()
    missing = [k for k, p in cae.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(not p.requires_grad for p in cae.target.parameters())


@pytest.mark.parametrize(("model", "shape", "n"), CASES, ids=["2d", "3d"])
def test_masked_pixels_do_not_change_the_visible_latents(model, shape, n):
    torch.manual_seed(0)
    cae = _build(model).eval()
    images, seeds = torch.rand(shape), torch.arange(shape[0])
    masks = cae.masks(images, seeds)  # (B, N), exactly N - K per image
    assert (masks.sum(dim=1) == masks.sum(dim=1)[0]).all()
    order = masks.to(torch.uint8).argsort(dim=1, stable=True)
    k = int((~masks[0]).sum())
    changed = patchify(images, cae.patch).clone()
    changed[masks] = torch.rand(int(masks.sum()), changed.shape[-1])  # new masked pixels
    changed = _unpatchify(changed, images.shape, cae.patch)
    assert not torch.allclose(changed, images)
    with torch.no_grad():
        a = cae.encode_subset(cae.encoder, images, order[:, :k])
        b = cae.encode_subset(cae.encoder, changed, order[:, :k])
        torch.testing.assert_close(a, b)
        predicted_a = cae.regress(a, order[:, :k], order[:, k:], cae.pos_table(images.ndim - 2))
        predicted_b = cae.regress(b, order[:, :k], order[:, k:], cae.pos_table(images.ndim - 2))
        torch.testing.assert_close(predicted_a, predicted_b)
    # the masks are those of each sample's seed
    assert torch.equal(cae.masks(images[1:], seeds[1:]), masks[1:])


def _unpatchify(patches, shape, p):
    """Inverse of :func:`patchify` (pixels (p, ..., C))."""
    b, c, *size = shape
    grid = [s // p for s in size]
    x = patches.reshape(b, *grid, *([p] * len(size)), c)
    if len(size) == 2:
        return torch.einsum("bhwpqc->bchpwq", x).reshape(shape)
    return torch.einsum("bdhwopqc->bcdohpwq", x).reshape(shape)


def _encode_by_hand(encoder, image, ids):
    """The timm ViT's latents ``(1, 1 + n, D)`` of the patches ``ids`` ``(n,)`` of ``image``
    ``(1, C, H, W)``, from its public pieces: patch embeddings plus their position embeddings at
    ``ids``, the class token with its own, then the blocks and the final norm."""
    tokens = encoder.patch_embed(image) + encoder.pos_embed[:, 1:]  # (1, N, D)
    cls_token = encoder.cls_token + encoder.pos_embed[:, :1]
    x = torch.cat([cls_token, tokens[:, ids]], dim=1)
    for block in encoder.blocks:
        x = block(x)
    return encoder.norm(x)


def test_loss_matches_a_reference_computation():
    """Reconstruction: MSE of the masked patches' per-patch normalised pixels; alignment: MSE of
    the regressor's output against the encoder (no gradient) on the masked patches alone. The
    reference is written out one image at a time from the encoder's public pieces, so a wrong
    choice of tokens (or of their position embeddings) fails it."""
    torch.manual_seed(0)
    cae = _build(extra=["ssl.cae_align_weight=3.0"]).eval()
    encoder = cae.encoder
    assert isinstance(encoder.norm_pre, torch.nn.Identity)  # nothing between embedding and blocks
    images, seeds = torch.rand(3, 1, 16, 16), torch.tensor([5, 6, 7])
    out = cae({"image": images, "sample_seed": seeds})
    masks = cae.masks(images, seeds)
    pos = encoder.pos_embed[:, 1:]  # (1, N, D)
    loss_rec, loss_align = 0.0, 0.0
    with torch.no_grad():
        for i in range(3):  # one image at a time, by hand
            img = images[i : i + 1]
            vis, hid = torch.nonzero(~masks[i]).flatten(), torch.nonzero(masks[i]).flatten()
            latent = _encode_by_hand(encoder, img, vis)  # (1, 1 + K, D)
            target = _encode_by_hand(encoder, img, hid)[:, 1:]  # (1, M, D)
            # the regressor: mask-token queries at the masked positions attend to the latents
            # (the class token's position embedding counts as zero)
            queries = cae.mask_token.expand(1, len(hid), -1)
            pos_context = torch.cat([torch.zeros(1, 1, pos.shape[-1]), pos[:, vis]], dim=1)
            for block in cae.regressor:
                queries = block(queries, latent, pos[:, hid], pos_context)
            pred = cae.regressor_norm(queries)
            loss_align += float(((pred - target) ** 2).mean()) / 3
            x = cae.decoder_embed(pred) + cae.decoder_pos[:, hid]
            pixels = cae.decoder_pred(cae.decoder_norm(cae.decoder_blocks(x)))[0]
            want = patchify(img, 4)[0, hid]
            want = (want - want.mean(-1, keepdim=True)) / (want.var(-1, keepdim=True) + 1e-6).sqrt()
            loss_rec += float(((pixels - want) ** 2).mean()) / 3
    assert float(out["loss_align"]) == pytest.approx(loss_align, rel=1e-4)
    assert float(out["loss_reconstruction"]) == pytest.approx(loss_rec, rel=1e-4)
    assert float(out["loss"].detach()) == pytest.approx(loss_rec + 3.0 * loss_align, rel=1e-4)


def test_stop_gradient_targets_come_from_the_encoder_in_eval_mode():
    """In training mode the student pass runs in train mode and the target pass in eval mode
    (no dropout / drop-path noise in the targets); the encoder's mode is restored after."""
    torch.manual_seed(0)
    cae = _build().train()
    modes = []
    cae.encoder.blocks[0].register_forward_pre_hook(lambda m, args: modes.append(m.training))
    cae({"image": torch.rand(2, 1, 16, 16), "sample_seed": torch.arange(2)})
    assert modes == [True, False]
    assert all(m.training for m in cae.encoder.modules())
    cae.encoder.blocks[0].drop_path1 = torch.nn.Dropout(0.9)  # a noisy block: targets unchanged
    target = []
    cae.encoder.norm.register_forward_hook(lambda m, args, out: target.append(out))
    batch = {"image": torch.rand(2, 1, 16, 16), "sample_seed": torch.arange(2)}
    cae(batch), cae(batch)
    torch.testing.assert_close(target[1], target[3])  # the target passes: deterministic
    assert not torch.allclose(target[0], target[2])  # the student passes: dropout


def test_mask_boxes_have_at_least_16_patches_when_the_grid_allows(monkeypatch):
    import medfm.ssl.cae as cae_module

    seen = []
    original = cae_module.block_masking

    def spy(grid, n_masked, *args, **kwargs):
        seen.append((grid, n_masked, kwargs["min_patches"]))
        return original(grid, n_masked, *args, **kwargs)

    monkeypatch.setattr(cae_module, "block_masking", spy)
    cae = _build(extra=["ssl.mask_ratio=0.5"])
    large = cae.masks(torch.rand(2, 1, 56, 56), torch.arange(2))  # a 14 x 14 grid
    cae.masks(torch.rand(2, 1, 16, 16), torch.arange(2))  # 4 x 4: 8 masked, boxes of <= 8
    assert seen == [((14, 14), 98, 16), ((4, 4), 8, 8)]
    assert (large.sum(dim=1) == 98).all()


def test_ema_target_follows_the_encoder_and_stop_gradient_has_none():
    torch.manual_seed(0)
    cae = _build(
        extra=["ssl.cae_target=ema", "ssl.ema_momentum=0.5", "ssl.ema_schedule_steps=null"]
    )
    opt = torch.optim.SGD([p for p in cae.parameters() if p.requires_grad], lr=1.0)
    cae({"image": torch.rand(4, 1, 16, 16)})["loss"].backward()
    opt.step()
    before = [p.clone() for p in cae.target.module.parameters()]
    cae.on_step_end()
    for b, t, s in zip(
        before, cae.target.module.parameters(), cae.encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)
    assert int(cae.ema_steps) == 1
    plain = _build()
    assert plain.target is None and not any(k.startswith("target.") for k in plain.state_dict())
    plain.on_step_end()  # a no-op
    with pytest.raises(ValueError, match="target"):
        _build(extra=["ssl.cae_target=momentum"])


@pytest.mark.slow
def test_the_cae_recipe_trains_a_few_steps(tmp_path):
    from medfm.data.ingestion.ingest import ingest
    from medfm.data.synthetic import SyntheticSpec, write_dataset
    from medfm.models import load_encoder
    from medfm.train.pretrain import pretrain

    labels = write_dataset(tmp_path / "d", SyntheticSpec(cases_per_center=2, images_per_case=1))
    manifest = ingest(
        [tmp_path / "d" / "raw"], tmp_path / "i", labels=labels, salt="s", progress=False
    ).manifest
    overrides = [
        "model.depth=1",
        "train.batch_size=4",
        "train.max_steps=2",
        "train.warmup_steps=1",
        "train.progress=false",
        "tracking.enabled=false",
        f"data.manifest={manifest}",
        f"out_dir={tmp_path / 'enc'}",
    ]
    out, result = pretrain(load_config(RECIPE, overrides))
    assert result.steps == 2 and np.isfinite(result.final_loss)
    model, _ = load_encoder(out)
    assert torch.isfinite(model.forward_features(torch.rand(1, 1, 32, 32))).all()
