"""SiT (medfm.ssl.sit): GMML corruption, rotations, the weighted L1 and the task weighting.

Forward/backward with a gradient for every parameter (2D, 3D, unified) is in the parametrised
tests of test_objectives.py / test_objectives_3d.py, exact resume there too, the recipe run in
tests/test_configs.py and 1 vs 2 processes in tests/train/test_multiprocess.py."""

import math

import numpy as np
import pytest
import torch

from medfm.config import ConfigError, load_config
from medfm.models.backbones import create_backbone
from medfm.ssl.objectives import build_objective
from medfm.ssl.sit import (
    KEEP,
    NOISE,
    OTHER,
    UNCERTAINTY_FACTORS,
    ZERO,
    SiT,
    gmml_corrupt,
    gmml_groups,
    rotate_hw,
    rotation_labels,
    weighted_l1,
)

TINY = ["model.depth=1", "data.image_size=16", "ssl.objective=sit"]


def _sit(*extra, model="vit_tiny_patch16_224"):
    cfg = load_config(None, [*TINY, f"model.name={model}", *extra])
    encoder = create_backbone(cfg.model, 16, 1)
    return build_objective(encoder, cfg.ssl, cfg.model.pooling)


@pytest.mark.parametrize("grid", [(8, 8), (4, 4, 4), (5, 7)])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75])
def test_gmml_corrupts_exactly_the_requested_ratio_in_blocks(grid, ratio):
    n, max_group = math.prod(grid), 0.5
    sides = [max(1, round(max_group * g)) for g in grid]
    for seed in range(20):
        kind, draw = gmml_groups(
            grid, ratio, max_group, (0.4, 0.4, 0.2), np.random.default_rng(seed)
        )
        assert kind.shape == draw.shape == (n,)
        assert (kind != KEEP).sum() == round(ratio * n)  # exact, not just within a group
        assert set(kind.tolist()) <= {KEEP, NOISE, OTHER, ZERO}
        # every group (one draw per group) lies inside one block of at most `sides` patches
        for u in set(draw[kind != KEEP].tolist()):
            where = np.argwhere(((draw == u) & (kind != KEEP)).reshape(grid))
            assert all(np.ptp(where[:, a]) < sides[a] for a in range(len(grid)))
            assert len(set(kind[draw == u].tolist())) == 1  # one kind per group
    # groups are blocks: far fewer groups than corrupted patches at ratio 0.5 on 8 x 8
    kind, draw = gmml_groups((8, 8), 0.5, 0.5, (1, 0, 0), np.random.default_rng(0))
    assert len(set(draw[kind != KEEP].tolist())) < 32 / 2


def test_gmml_corrupt_noise_donor_region_and_zeros_per_group():
    b, patch = 4, 4
    # sample i's pixel (y, x) holds i * 1000 + y * 16 + x: a donated pixel names its donor and place
    place = torch.arange(256.0).reshape(1, 1, 16, 16)
    images = torch.cat([i * 1000 + place for i in range(b)])
    seeds = torch.arange(10, 10 + b)
    for probs, kind in (((1, 0, 0), NOISE), ((0, 1, 0), OTHER), ((0, 0, 1), ZERO)):
        out, mask = gmml_corrupt(images, seeds, patch, 0.5, 0.5, probs)
        assert mask.shape == (b, 1, 16, 16) and mask.mean().item() == 0.5
        kept = mask.expand_as(images) == 0
        assert torch.equal(out[kept], images[kept])
        hit = out[~kept]
        if kind == NOISE:
            assert 0 <= hit.min() and hit.max() <= 1 and hit.std() > 0.2
        elif kind == ZERO:
            assert (hit == 0).all()
        else:
            donor, where = out.div(1000, rounding_mode="floor"), out.remainder(1000)
            own = torch.arange(b).view(b, 1, 1, 1).expand_as(out)
            assert torch.equal(where, place.expand_as(out))  # the same region of the donor
            assert (donor[~kept] != own[~kept]).all() and (donor[kept] == own[kept]).all()
    # reproducible from the seeds; one image alone: its "other image" groups get noise
    again, _ = gmml_corrupt(images, seeds, patch, 0.5, 0.5, (0.4, 0.4, 0.2))
    assert torch.equal(again, gmml_corrupt(images, seeds, patch, 0.5, 0.5, (0.4, 0.4, 0.2))[0])
    alone, mask = gmml_corrupt(images[:1], seeds[:1], patch, 0.5, 0.5, (0, 1, 0))
    assert (alone[mask.bool()] <= 1).all()


def test_gmml_corrupt_with_the_global_batch_as_pool_is_the_share_of_the_whole():
    """As under DDP: rank 1 corrupts its half with donors from the gathered global batch."""
    images, seeds = torch.rand(6, 1, 8, 8, 8), torch.arange(6) * 7
    whole, whole_mask = gmml_corrupt(images, seeds, 4, 0.5, 0.5, (0.3, 0.5, 0.2))
    half, half_mask = gmml_corrupt(images[3:], seeds[3:], 4, 0.5, 0.5, (0.3, 0.5, 0.2), images, 3)
    assert torch.equal(half, whole[3:]) and torch.equal(half_mask, whole_mask[3:])


def test_rotations_are_per_seed_quarter_turns_in_the_hw_plane():
    seeds = torch.arange(200)
    labels = rotation_labels(seeds)
    assert torch.equal(labels, rotation_labels(seeds.clone()))
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert torch.equal(rotation_labels(seeds[5:6]), labels[5:6])  # per sample
    x = torch.rand(4, 2, 3, 8, 8)
    turns = torch.tensor([0, 1, 2, 3])
    out = rotate_hw(x, turns)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], i, dims=(-2, -1)))
    assert torch.equal(rotate_hw(x[:, :, 0], turns), out[:, :, 0])  # 2D = each slice of 3D
    with pytest.raises(ValueError, match="H == W"):
        rotate_hw(torch.rand(1, 1, 4, 6), torch.tensor([1]))


def test_weighted_l1_against_a_hand_computed_value():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 0.0], [5.0, 4.5]])  # errors 1, 2, 2, 0.5
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert weighted_l1(pred, target, mask, 1.0).item() == pytest.approx(5.5 / 4)
    # corrupted weight 3: (3 * 1 + 2 + 3 * 2 + 0.5) / (3 + 1 + 3 + 1)
    assert weighted_l1(pred, target, mask, 3.0).item() == pytest.approx(11.5 / 8)
    assert weighted_l1(pred, target, mask, 0.0).item() == pytest.approx(2.5 / 2)


@pytest.mark.parametrize("model", ["vit_tiny_patch16_224", "vit3d_tiny"])
def test_loss_is_the_uncertainty_weighted_or_fixed_sum_of_the_three_terms(model):
    torch.manual_seed(0)
    sit = _sit(model=model)
    assert isinstance(sit, SiT)
    with torch.no_grad():
        sit.log_vars.copy_(torch.tensor([0.5, -0.2, 1.5]))
    shape = (4, 1, 16, 16) if model.startswith("vit_") else (2, 1, 16, 16, 16)
    batch = {"image": torch.rand(shape), "sample_seed": torch.arange(shape[0])}
    out = sit(batch)
    terms = [out["loss_rotation"], out["loss_contrastive"], out["loss_reconstruction"]]
    s = [0.5, -0.2, 1.5]
    expected = sum(
        c * math.exp(-v) * t + 0.5 * v
        for c, v, t in zip(UNCERTAINTY_FACTORS, s, terms, strict=True)
    )
    assert out["loss"].item() == pytest.approx(float(expected), rel=1e-5)
    assert out["weight_reconstruction"].item() == pytest.approx(0.5 * math.exp(-1.5), rel=1e-6)
    assert out["corrupt_fraction"].item() == pytest.approx(0.5)
    fixed = _sit("ssl.sit_weighting=fixed", "ssl.sit_weights=[0.5,2.0,3.0]", model=model)
    assert not hasattr(fixed, "log_vars")
    out = fixed(batch)
    expected = (
        0.5 * out["loss_rotation"] + 2.0 * out["loss_contrastive"] + 3 * out["loss_reconstruction"]
    )
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_reconstruction_targets_the_clean_rotated_view():
    """A head that copies its input would score 0 only on the clean views: check the target by
    running the corruption by hand."""
    torch.manual_seed(0)
    sit = _sit("ssl.sit_corrupt_ratio=0.25")
    images, seeds = torch.rand(2, 1, 16, 16), torch.tensor([3, 4])
    clean, corrupted, masks, labels = sit._corrupted_views(images, seeds)
    v1, _ = sit.views(images, sample_seeds=seeds)
    assert torch.equal(clean[0], rotate_hw(v1, labels[0]))
    assert all(m.mean().item() == 0.25 for m in masks)
    assert torch.equal(
        corrupted[0][masks[0].expand_as(v1) == 0], clean[0][masks[0].expand_as(v1) == 0]
    )


def test_the_loss_depends_on_the_sample_seeds_not_the_global_rng():
    torch.manual_seed(0)
    sit = _sit().eval()
    batch = {"image": torch.rand(4, 1, 16, 16), "sample_seed": torch.arange(4)}

    def loss(global_seed, shift):
        torch.manual_seed(global_seed)
        with torch.no_grad():
            return float(sit({**batch, "sample_seed": batch["sample_seed"] + shift})["loss"])

    assert loss(1, 0) == loss(2, 0) != loss(1, 10)


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"ssl\.sit_corrupt_probs="):
        _sit("ssl.sit_corrupt_probs=[0.5,0.2,0.2]")
    with pytest.raises(ConfigError, match=r"ssl\.sit_weighting="):
        _sit("ssl.sit_weighting=learned")
    with pytest.raises(ConfigError, match=r"ssl\.sit_corrupt_ratio="):
        _sit("ssl.sit_corrupt_ratio=1.0")
