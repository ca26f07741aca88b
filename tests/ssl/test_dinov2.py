"""DINOv2 (medfm.ssl.dinov2): iBOT and KoLeo against hand-written references, Sinkhorn-Knopp,
block masks, the mask token, the teacher and its state, and the pathology recipe."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medfm.config import ConfigError, load_config
from medfm.models.backbones import create_backbone
from medfm.ssl.dino import tokens_any_size
from medfm.ssl.dinov2 import DINOv2, ibot_loss, ibot_masks, koleo_loss, sinkhorn_knopp
from medfm.ssl.masking import block_mask
from medfm.ssl.objectives import build_objective

TINY = ["model.depth=1", "data.image_size=16", "ssl.local_crop_size=8", "ssl.n_local_crops=2"]
RECIPE = Path(__file__).parents[2] / "configs" / "pretrain" / "pathology_2d_dinov2.yaml"


def _build(extra=(), model="vit_tiny_patch16_224"):
    cfg = load_config(None, [*TINY, "ssl.objective=dinov2", f"model.name={model}", *extra])
    encoder = create_backbone(cfg.model, 16, 1, cfg.data.depth_size)
    return build_objective(encoder, cfg.ssl, cfg.model.pooling)


def test_ibot_loss_matches_a_python_loop():
    g = torch.Generator().manual_seed(0)
    n, patches, k, temp = 3, 5, 4, 0.1
    masks = torch.tensor(
        [[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.bool
    )  # image 1 has no masked patch: it counts as 0 in the mean over images
    m = int(masks.sum())
    student = torch.randn(m, k, generator=g)
    teacher = torch.softmax(torch.randn(m, k, generator=g), dim=-1)
    expected, row = 0.0, 0
    for i in range(n):
        per_image = []
        for j in range(patches):
            if not masks[i, j]:
                continue
            logits = [float(s) / temp for s in student[row]]
            log_z = math.log(sum(math.exp(x) for x in logits))
            per_image.append(
                -sum(float(q) * (x - log_z) for q, x in zip(teacher[row], logits, strict=True))
            )
            row += 1
        expected += sum(per_image) / len(per_image) if per_image else 0.0
    expected /= n
    assert float(ibot_loss(student, teacher, masks, temp)) == pytest.approx(expected, rel=1e-5)


def test_koleo_matches_its_closed_form_on_points_of_the_unit_circle():
    """Points at angles 0, 0.1, 0.3, 0.7, 1.5 (scaled: KoLeo normalises): nearest-neighbour
    gaps 0.1, 0.1, 0.2, 0.4, 0.8 rad, chords 2 sin(gap / 2)."""
    angles = torch.tensor([0.0, 0.1, 0.3, 0.7, 1.5], dtype=torch.float64)
    scales = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=torch.float64)
    points = torch.stack([angles.cos(), angles.sin()], dim=1) * scales[:, None]
    gaps = [0.1, 0.1, 0.2, 0.4, 0.8]
    expected = -sum(math.log(2 * math.sin(g / 2)) for g in gaps) / len(gaps)
    assert float(koleo_loss(points)) == pytest.approx(expected, rel=1e-6)
    # in a shuffled order the same (a mean over points)
    order = torch.tensor([3, 0, 4, 2, 1])
    assert float(koleo_loss(points[order])) == pytest.approx(expected, rel=1e-6)
    # the gradient spreads the points: it flows into both a point and its neighbour
    x = points.clone().requires_grad_()
    koleo_loss(x).backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(dim=1) > 0).all()
    one = torch.ones(1, 3, requires_grad=True)
    assert float(koleo_loss(one).detach()) == 0.0


def _sinkhorn_reference(teacher, temp, iterations):
    """DINOv2's ``sinkhorn_knopp_teacher`` in one process, verbatim in float64."""
    q = torch.exp(teacher.double() / temp).t()
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def test_sinkhorn_knopp_matches_dinov2_and_balances_the_prototypes():
    teacher = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)) * 0.1
    out = sinkhorn_knopp(teacher, 0.04, 3)
    torch.testing.assert_close(
        out.double(), _sinkhorn_reference(teacher, 0.04, 3), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(out.sum(dim=1), torch.ones(6))  # each row a distribution
    balanced = sinkhorn_knopp(teacher, 0.04, 200).sum(dim=0)  # prototype masses -> B / K
    torch.testing.assert_close(balanced, torch.full((4,), 1.5), rtol=1e-3, atol=1e-3)
    # large logits do not overflow: the global maximum is subtracted first (exp(2500) is inf),
    # which changes nothing else (the normalisations cancel a constant shift; float32 rounds
    # 2500 + x to ~2e-4)
    torch.testing.assert_close(sinkhorn_knopp(teacher + 100, 0.04), out, rtol=1e-3, atol=1e-4)
    assert sinkhorn_knopp(torch.zeros(0, 4), 0.04).shape == (0, 4)
    # one process: the local normalisation is the same
    torch.testing.assert_close(sinkhorn_knopp(teacher, 0.04, 3, distributed=False), out)


def test_sinkhorn_knopp_reduces_over_ranks_only_in_training(monkeypatch):
    """In eval mode (validation, where ranks need not run in step) no collective is called."""
    from medfm.ssl import gather

    calls = []
    for name in ("all_reduce_mean", "gather_no_grad"):
        original = getattr(gather, name)
        monkeypatch.setattr(gather, name, lambda x, _f=original, _n=name: calls.append(_n) or _f(x))
    objective = _build(["ssl.dinov2_centering=sinkhorn_knopp", "ssl.ibot_mask_prob=1"])
    batch = {"image": torch.rand(4, 1, 16, 16), "sample_seed": torch.arange(4)}
    with torch.no_grad():
        objective.eval()(batch)
        assert calls == []
        objective.train()(batch)
    assert "all_reduce_mean" in calls and "gather_no_grad" in calls


def test_block_masks_are_blocks_of_the_requested_size_in_2d_and_3d():
    for grid, n in [((14, 14), 98), ((4, 4, 4), 20), ((8, 8), 10)]:
        for seed in range(5):
            loose = block_mask(grid, n, random.Random(seed))
            exact = block_mask(grid, n, random.Random(seed), exact=True)
            assert loose.shape == (int(np.prod(grid)),) and int(loose.sum()) <= n
            assert int(exact.sum()) == n
            assert torch.equal(exact & loose, loose)  # exact only adds to the blocks
    # a block mask is contiguous: its 14 x 14 masks have far fewer edges than random ones
    mask = block_mask((14, 14), 60, random.Random(3)).reshape(14, 14).int()
    edges = int((mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum())
    assert edges < 60


def test_ibot_masks_follow_the_probability_and_ratio_and_each_samples_seed():
    seeds = torch.arange(40)
    masks = ibot_masks((14, 14), seeds, 0, 1.0, (0.1, 0.5))
    counts = masks.sum(dim=1)
    assert (counts > 0).all() and (counts <= int(196 * 0.5)).all()
    assert torch.equal(ibot_masks((14, 14), seeds[5:9], 0, 1.0, (0.1, 0.5)), masks[5:9])
    assert not torch.equal(ibot_masks((14, 14), seeds, 1, 1.0, (0.1, 0.5)), masks)
    assert not ibot_masks((14, 14), seeds, 0, 0.0, (0.1, 0.5)).any()
    half = ibot_masks((14, 14), torch.arange(400), 0, 0.5, (0.1, 0.5)).any(dim=1).float().mean()
    assert 0.4 < float(half) < 0.6


@pytest.mark.parametrize("model", ["vit_tiny_patch16_224", "vit3d_tiny"])
def test_masked_patches_are_the_mask_token(model):
    """All patches masked: the tokens do not depend on the image; none masked: forward_features."""
    cfg = load_config(None, [*TINY, f"model.name={model}"])
    encoder = create_backbone(cfg.model, 16, 1).eval()
    shape = (2, 1, 16, 16) if model.startswith("vit_") else (2, 1, 16, 16, 16)
    x, y = torch.rand(shape), torch.rand(shape)
    n = 16 if model.startswith("vit_") else 64
    token = torch.randn(1, encoder.embed_dim)
    every = torch.ones(2, n, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(
            tokens_any_size(encoder, x, every, token), tokens_any_size(encoder, y, every, token)
        )
        none = tokens_any_size(encoder, x, torch.zeros(2, n, dtype=torch.bool), token)
        torch.testing.assert_close(none, encoder.forward_features(x))
    with pytest.raises(ValueError, match="mask_token"):
        tokens_any_size(encoder, x, every)


@pytest.mark.parametrize(
    "extra",
    [(), ("ssl.dinov2_centering=sinkhorn_knopp", "ssl.ibot_separate_head=true")],
    ids=["centering", "sinkhorn_separate_head"],
)
def test_loss_is_the_weighted_sum_and_every_part_learns(extra):
    torch.manual_seed(0)
    objective = _build(
        ["ssl.ibot_weight=0.5", "ssl.koleo_weight=0.3", "ssl.ibot_mask_prob=1", *extra]
    )
    assert isinstance(objective, DINOv2)
    out = objective({"image": torch.rand(4, 1, 16, 16), "sample_seed": torch.arange(4)})
    expected = out["loss_dino"] + 0.5 * out["loss_ibot"] + 0.3 * out["loss_koleo"]
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float(out["loss_ibot"]) > 0 and float(out["mask_fraction"]) > 0
    out["loss"].backward()
    assert objective.mask_token.grad.abs().sum() > 0
    separate = objective.student.ibot_head is not None
    assert separate == bool(extra)
    if separate:
        assert all(
            p.grad is not None for p in objective.student.ibot_head.parameters() if p.requires_grad
        )
    centred = objective.center.abs().sum() > 0
    assert bool(centred) == (not extra)  # the EMA centres move only with "centering"


def test_ema_teacher_state_and_config_errors():
    torch.manual_seed(0)
    objective = _build(
        ["ssl.ema_momentum=0.9", "ssl.ema_schedule_steps=null", "ssl.ibot_mask_prob=1"]
    )
    opt = torch.optim.SGD([p for p in objective.parameters() if p.requires_grad], lr=1.0)
    objective({"image": torch.rand(4, 1, 16, 16)})["loss"].backward()
    opt.step()
    before = [p.clone() for p in objective.teacher.module.parameters()]
    objective.on_step_end()
    for b, t, s in zip(
        before, objective.teacher.module.parameters(), objective.student.parameters(), strict=True
    ):
        assert torch.allclose(t, 0.9 * b + 0.1 * s, atol=1e-6)
    state = objective.state_dict()
    assert {"center", "ibot_center", "ema_steps", "mask_token"} <= set(state)
    assert int(state["ema_steps"]) == 1 and state["ibot_center"].abs().sum() > 0
    assert any(k.startswith("teacher.module.encoder.") for k in state)
    with pytest.raises(ConfigError, match="ibot_mask_ratio"):
        _build(["ssl.ibot_mask_ratio=[0.5,1.0]"])
    with pytest.raises(ValueError, match="centering"):
        _build(["ssl.dinov2_centering=mean"])


def test_a_koleo_gradient_step_spreads_the_points():
    """KoLeo's gradient step moves nearest neighbours apart."""
    x = F.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    x.requires_grad_()
    before = float(koleo_loss(x).detach())
    koleo_loss(x).backward()
    with torch.no_grad():
        after = float(koleo_loss(x - 0.01 * x.grad))
    assert after < before


@pytest.mark.slow
def test_the_pathology_recipe_trains_a_few_steps(tmp_path):
    from medfm.data.ingestion.ingest import ingest
    from medfm.data.synthetic import SyntheticSpec, write_dataset
    from medfm.models import load_encoder
    from medfm.train.pretrain import pretrain

    labels = write_dataset(tmp_path / "d", SyntheticSpec(cases_per_center=2, images_per_case=1))
    manifest = ingest(
        [tmp_path / "d" / "raw"], tmp_path / "i", labels=labels, salt="s", progress=False
    ).manifest
    cfg = load_config(
        RECIPE,
        [
            "model.depth=1",
            "data.image_size=64",
            "data.preprocess=[{name: scale_range, a_min: 0, a_max: 255}, "
            "{name: resize_to_model, size: 64}]",
            "ssl.local_crop_size=32",
            "ssl.n_local_crops=2",
            "ssl.dino_out_dim=256",
            "ssl.dino_hidden_dim=64",
            "ssl.ibot_mask_prob=1.0",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.warmup_steps=1",
            "train.progress=false",
            "tracking.enabled=false",
            "data.num_workers=0",
            f"data.manifest={manifest}",
            f"out_dir={tmp_path / 'enc'}",
        ],
    )
    out, result = pretrain(cfg)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    model, enc_cfg = load_encoder(out)
    assert torch.isfinite(model.forward_features(torch.rand(1, 3, 64, 64))).all()
    assert enc_cfg.ssl.objective == "dinov2"
