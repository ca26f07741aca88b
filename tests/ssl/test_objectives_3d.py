"""Contrastive objectives on 3D volumes with ViT3D (and on 2D images with a unified ViT3D)."""

import re

import pytest
import torch

from medfm.config import ConfigError, load_config
from medfm.models.backbones import create_backbone, encode
from medfm.models.pos_embed import sincos_3d
from medfm.models.vit3d import ViT3D
from medfm.ssl.dino import encode_any_size
from medfm.ssl.objectives import OBJECTIVES, build_objective
from medfm.ssl.views import (
    Augment,
    MultiCrop,
    TwoViews,
    crop_flip_theta_3d,
    gaussian_blur,
    random_resized_crop,
)

TINY_3D = [
    "model.depth=1",
    "data.image_size=16",
    "model.patch_size=4",
    "ssl.local_crop_size=8",
    "ssl.n_local_crops=2",
]


def _build(name, model="vit3d_tiny", extra=()):
    cfg = load_config(None, [f"model.name={model}", *TINY_3D, f"ssl.objective={name}", *extra])
    encoder = create_backbone(cfg.model, cfg.data.image_size, 1, cfg.data.depth_size)
    return build_objective(encoder, cfg.ssl, cfg.model.pooling)


def _check_forward_backward(objective, name, images, unused=()):
    """Finite loss; every trainable parameter but those named in ``unused`` gets a gradient."""
    out = objective({"image": images, "meta": torch.tensor([30.0, 55.0, 71.0])[: len(images)]})
    assert "loss" in out and torch.isfinite(out["loss"])
    assert all(v.ndim == 0 and not v.requires_grad for k, v in out.items() if k != "loss")
    out["loss"].backward()
    missing = [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None]
    assert sorted(missing) == sorted(unused)
    teacher = [p for n, p in objective.named_parameters() if n.startswith("teacher.")]
    assert all(not p.requires_grad for p in teacher)
    assert bool(teacher) == (name in ("dino", "dinov2"))


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_forward_backward_on_volumes_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    _check_forward_backward(_build(name), name, torch.rand(2, 1, 16, 16, 16))


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_unified_encoder_trains_on_2d_images(name):
    """A 2D batch trains everything but the 3D patch kernel (the volume path is vit3d's)."""
    torch.manual_seed(0)
    objective = _build(name, model="unified_tiny")
    volume_only = [  # the 3D patch kernel and MAE's (CAE's) 3D pixel head
        n
        for n, p in objective.named_parameters()
        if p.requires_grad
        and re.fullmatch(r"(.*\.)?(encoder\.patch_embed\.proj|decoder_pred)\.(weight|bias)", n)
    ]
    assert len(volume_only) == (4 if name in ("mae", "hybrid", "cae", "sit") else 2)
    _check_forward_backward(objective, name, torch.rand(3, 1, 16, 16), unused=volume_only)


def test_dino_views_on_volumes_are_global_and_local_cubes():
    dino = _build("dino")
    crops = dino.views(torch.rand(2, 1, 16, 16, 16))
    assert [tuple(c.shape) for c in crops] == [(2, 1, 16, 16, 16)] * 2 + [(2, 1, 8, 8, 8)] * 2


def test_anisotropic_volumes_get_views_of_the_encoder_size():
    torch.manual_seed(0)
    objective = _build("simclr", extra=["data.depth_size=8"])
    v1, v2 = objective.views(torch.rand(2, 1, 8, 16, 16))
    assert v1.shape == v2.shape == (2, 1, 8, 16, 16)
    _check_forward_backward(objective, "simclr", torch.rand(2, 1, 8, 16, 16))


def test_a_2d_encoder_still_rejects_nothing_but_non_vit_encoders():
    cfg = load_config(None, [*TINY_3D, "ssl.objective=simclr"])
    with pytest.raises(ConfigError, match=r"ssl\.objective='simclr' needs a timm ViT"):
        build_objective(torch.nn.Linear(2, 2), cfg.ssl)
    with pytest.raises(ConfigError, match=r"ssl\.local_crop_size=6"):
        _build("dino", extra=["ssl.local_crop_size=6"])


@pytest.mark.parametrize("model", ["vit3d_tiny", "unified_tiny"])
def test_encode_any_size_recomputes_the_sincos_table_for_local_crops(model):
    cfg = load_config(None, [f"model.name={model}", *TINY_3D])
    encoder = create_backbone(cfg.model, 16, 1).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    assert torch.equal(encode_any_size(encoder, x), encode(encoder, x))
    local = torch.rand(2, 1, 8, 12, 8)
    # the same computation as a ViT3D built for the crop's size, with the same weights
    small = ViT3D((8, 12, 8), 4, embed_dim=192, depth=1, unified=model == "unified_tiny").eval()
    torch.testing.assert_close(small.pos_embed[0, 1:], sincos_3d(192, 2, 3, 2))
    weights = {k: v for k, v in encoder.state_dict().items() if k != "pos_embed"}
    assert small.load_state_dict(weights, strict=False).missing_keys == ["pos_embed"]
    torch.testing.assert_close(encode_any_size(encoder, local, "cls"), encode(small, local, "cls"))
    with pytest.raises(ValueError, match="divisible"):
        encode_any_size(encoder, torch.rand(2, 1, 6, 8, 8))
    if model == "unified_tiny":
        image = torch.rand(2, 1, 16, 16)
        assert torch.equal(encode_any_size(encoder, image), encode(encoder, image))
        assert encode_any_size(encoder, torch.rand(2, 1, 8, 8)).shape == (2, 192)


def test_encode_any_size_interpolates_a_table_that_is_not_sincos():
    cfg = load_config(None, ["model.name=vit3d_tiny", *TINY_3D])
    encoder = create_backbone(cfg.model, 16, 1).eval()
    local = torch.rand(2, 1, 8, 8, 8)
    exact = encode_any_size(encoder, local)
    with torch.no_grad():
        encoder.pos_embed.add_(0.5 * torch.randn_like(encoder.pos_embed))  # e.g. learned (MONAI)
    moved = encode_any_size(encoder, local)
    assert moved.shape == exact.shape and not torch.allclose(moved, exact)


def test_volume_views_are_keyed_by_sample_seeds_differ_across_samples_and_stay_in_range():
    same = torch.rand(1, 1, 16, 16, 16).expand(4, -1, -1, -1, -1).contiguous()
    views = TwoViews(8, random_field_strength=0.5, blur_prob=1.0)
    seeds = torch.arange(7, 11)
    torch.manual_seed(5)
    v1, v2 = views(same, sample_seeds=seeds)
    torch.manual_seed(6)  # the global RNG plays no part once the seeds are given
    w1, w2 = views(same, sample_seeds=seeds)
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert v1.shape == (4, 1, 8, 8, 8)
    assert 0.0 <= v1.min() and v1.max() <= 1.0 and 0.0 <= v2.min() and v2.max() <= 1.0
    assert not torch.allclose(v1, v2)
    assert all(not torch.allclose(v1[0], v1[i]) for i in range(1, 4))
    torch.manual_seed(5)  # without seeds: drawn from the global RNG, fixed by manual_seed
    f1, _ = views(same)
    torch.manual_seed(5)
    assert torch.equal(f1, views(same)[0])


def test_a_volumes_views_do_not_depend_on_the_rest_of_its_batch():
    """Volume 1's global and local crops are the same alone and in a batch of 3 (up to the
    rounding of the batched blur convolution), and another seed gives other crops."""
    views = MultiCrop(8, 4, n_local=1, random_field_strength=0.5, blur_prob=1.0, noise_prob=1.0)
    volumes = torch.rand(3, 1, 16, 16, 16)
    seeds = torch.tensor([3, 2**61 + 5, 12345])
    batch, alone = views(volumes, sample_seeds=seeds), views(volumes[1:2], sample_seeds=seeds[1:2])
    reseeded = views(volumes[1:2], sample_seeds=seeds[1:2] + 1)
    for b, a, r in zip(batch, alone, reseeded, strict=True):
        torch.testing.assert_close(b[1:2], a, rtol=0, atol=1e-6)
        assert (r - a).abs().max() > 0.05
    theta = crop_flip_theta_3d(3, (16, 16, 16), sample_seeds=seeds)
    assert torch.equal(theta[1:2], crop_flip_theta_3d(1, (16, 16, 16), sample_seeds=seeds[1:2]))


def test_multicrop_on_volumes_and_one_3d_size_serves_2d_batches():
    crops = MultiCrop((8, 16, 16), 8, n_local=2)(torch.rand(2, 1, 8, 16, 16))
    assert [tuple(c.shape) for c in crops] == [(2, 1, 8, 16, 16)] * 2 + [(2, 1, 8, 8, 8)] * 2
    views = TwoViews((8, 12, 16))(torch.rand(2, 1, 16, 16))  # 2D batch: the last two sides
    assert [tuple(v.shape) for v in views] == [(2, 1, 12, 16)] * 2
    with pytest.raises(ValueError, match="does not fit a 3D batch"):
        TwoViews((12, 16))(torch.rand(2, 1, 16, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        TwoViews(8)(torch.rand(2, 16, 16))


def test_full_volume_crop_is_identity_flip_mirrors_w_and_axes_are_d_h_w():
    x = torch.rand(3, 2, 6, 6, 6)
    full = random_resized_crop(x, 6, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0)
    assert torch.allclose(full, x, atol=1e-5)
    flipped = random_resized_crop(x, 6, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    plain = Augment(6, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0)
    plain.blur_prob = plain.noise_prob = 0.0
    assert torch.allclose(plain(x), x, atol=1e-5)
    # an eighth of the volume (4^3 of 8^3) resized to 2^3: on a ramp 1 * d + 10 * h + 100 * w
    # (trilinear is exact on it) neighbouring outputs are 2 input voxels apart along each axis
    d, h, w = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), torch.arange(8.0), indexing="ij")
    ramp = (d + 10 * h + 100 * w).expand(5, 1, 8, 8, 8)
    crop = random_resized_crop(ramp, 2, scale=(0.125, 0.125), ratio=(1.0, 1.0), flip_prob=0.0)
    for axis, step in ((2, 2.0), (3, 20.0), (4, 200.0)):
        diff = crop.narrow(axis, 1, 1) - crop.narrow(axis, 0, 1)
        assert torch.allclose(diff, torch.full_like(diff, step), atol=1e-3)
    theta = crop_flip_theta_3d(4, (8, 16, 32), scale=(0.2, 0.6))
    assert theta.shape == (4, 3, 4)
    sides = theta[:, [0, 1, 2], [0, 1, 2]].abs()
    assert (sides <= 1).all() and (theta[:, :, 3].abs() <= 1 - sides + 1e-6).all()
    volume = sides.prod(dim=1)  # fraction of the volume, unless a side was clipped
    assert ((volume >= 0.2 - 1e-5) | (sides == 1).any(dim=1)).all() and (volume <= 0.6 + 1e-5).all()


def test_3d_blur_is_per_sample_separable_and_preserves_mass():
    x = torch.zeros(2, 1, 9, 9, 9)
    x[:, :, 4, 4, 4] = 1.0
    out = gaussian_blur(x, torch.tensor([1e-3, 1.0]))
    assert torch.allclose(out[0], x[0], atol=1e-6)
    assert out[1].sum().item() == pytest.approx(1.0, rel=1e-5)
    profile = out[1, 0, 4, 4]  # the same 1D profile along every axis
    torch.testing.assert_close(out[1, 0, :, 4, 4], profile)
    torch.testing.assert_close(out[1, 0, 4, :, 4], profile)
    torch.testing.assert_close(out[1, 0, 2], profile[2] * out[1, 0, 4] / profile[4])
    alone = gaussian_blur(x[1:], torch.tensor([1.0]))
    assert torch.allclose(out[1:], alone, atol=1e-6)
    flat = torch.full((1, 2, 5, 5, 5), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([2.0])), flat, atol=1e-6)
