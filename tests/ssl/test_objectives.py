import pytest
import torch

from medfm.config import ConfigError, load_config
from medfm.models.backbones import create_backbone, encode
from medfm.ssl import mae as mae_module
from medfm.ssl.dino import DINO, encode_any_size
from medfm.ssl.ema import EMATeacher, cosine_momentum
from medfm.ssl.hybrid import Hybrid
from medfm.ssl.objectives import OBJECTIVES, build_objective
from medfm.ssl.views import (
    Augment,
    MultiCrop,
    TwoViews,
    adjust_intensity,
    call_views,
    crop_flip_theta,
    gaussian_blur,
    mix_seeds,
    random_resized_crop,
    view_seeds,
)

TINY = ["model.depth=1", "data.image_size=16", "ssl.local_crop_size=8", "ssl.n_local_crops=2"]


def _build(name, channels=1, extra=()):
    cfg = load_config(None, [*TINY, f"ssl.objective={name}", f"data.channels={channels}", *extra])
    encoder = create_backbone(cfg.model, cfg.data.image_size, channels)
    return build_objective(encoder, cfg.ssl, cfg.model.pooling), cfg


def _batch(channels=1, b=4):
    return {"image": torch.rand(b, channels, 16, 16), "meta": torch.tensor([30.0, 42, 55, 71])}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_forward_backward_every_trainable_parameter_gets_a_gradient(name, channels):
    torch.manual_seed(0)
    objective, _ = _build(name, channels)
    out = objective(_batch(channels))
    assert "loss" in out and torch.isfinite(out["loss"])
    assert all(v.ndim == 0 and not v.requires_grad for k, v in out.items() if k != "loss")
    out["loss"].backward()
    missing = [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    teacher = [n for n, p in objective.named_parameters() if n.startswith("teacher.")]
    assert all(not p.requires_grad for n, p in objective.named_parameters() if n in teacher)
    assert bool(teacher) == (name in ("dino", "dinov2"))


def test_mae_entry_builds_the_mae_its_settings_describe():
    cfg = load_config(None, ["model.depth=1", "data.image_size=16", "ssl.mask_ratio=0.5"])
    built = []
    for build in (
        lambda enc, ssl: mae_module.MAE(enc, **mae_module.mae_kwargs(ssl)),
        build_objective,
    ):
        torch.manual_seed(3)
        built.append(build(create_backbone(cfg.model, 16, 1), cfg.ssl))
    assert all(type(m) is mae_module.MAE for m in built)
    assert built[0].mask_ratio == built[1].mask_ratio == 0.5
    first, second = built[0].state_dict(), built[1].state_dict()
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_unknown_objective_and_bad_local_crop_name_the_key():
    with pytest.raises(ConfigError, match=r"ssl\.objective='byol'.*dino"):
        _build("byol")
    with pytest.raises(ConfigError, match=r"ssl\.local_crop_size=6"):
        _build("dino", extra=["ssl.local_crop_size=6"])
    with pytest.raises(ConfigError, match=r"needs a timm ViT"):
        build_objective(torch.nn.Linear(2, 2), load_config(None, ["ssl.objective=simclr"]).ssl)


def test_metadata_objective_needs_meta_in_the_batch():
    objective, _ = _build("metadata")
    with pytest.raises(KeyError, match=r"batch\['meta'\]"):
        objective({"image": torch.rand(4, 1, 16, 16)})
    objective, _ = _build("metadata", extra=["ssl.meta_key=age"])
    out = objective({"image": torch.rand(4, 1, 16, 16), "age": torch.tensor([1.0, 2, 3, 4])})
    assert torch.isfinite(out["loss"])


def test_hybrid_is_the_weighted_sum_and_shares_one_encoder():
    torch.manual_seed(0)
    objective, _ = _build("hybrid", extra=["ssl.weight_mim=0.5", "ssl.weight_contrastive=2.0"])
    assert isinstance(objective, Hybrid)
    out = objective(_batch())
    expected = 0.5 * out["loss_mae"] + 2.0 * out["loss_contrastive"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    names = [n for n, _ in objective.named_parameters()]
    assert not any(n.startswith("encoder.") for n in names)  # held once, under mae.encoder
    assert objective.encoder is objective.mae.encoder


def _student_teacher_distance(dino):
    pairs = zip(dino.student.parameters(), dino.teacher.module.parameters(), strict=True)
    return sum((s - t).pow(2).sum() for s, t in pairs).item()


def test_dino_ema_update_moves_teacher_toward_student():
    torch.manual_seed(0)
    dino, cfg = _build("dino", extra=["ssl.ema_momentum=0.9", "ssl.ema_schedule_steps=null"])
    assert isinstance(dino, DINO) and _student_teacher_distance(dino) == 0.0
    opt = torch.optim.SGD([p for p in dino.parameters() if p.requires_grad], lr=1.0)
    dino(_batch())["loss"].backward()
    opt.step()
    teacher_before = [p.clone() for p in dino.teacher.module.parameters()]
    gap = _student_teacher_distance(dino)
    assert gap > 0
    dino.on_step_end()
    assert _student_teacher_distance(dino) == pytest.approx(0.81 * gap, rel=1e-4)
    for before, t, s in zip(
        teacher_before, dino.teacher.module.parameters(), dino.student.parameters(), strict=True
    ):
        assert torch.allclose(t, 0.9 * before + 0.1 * s, atol=1e-6)
    assert int(dino.ema_steps) == 1
    dino.train()
    assert not dino.teacher.module.training  # the teacher stays in eval mode


def test_dino_momentum_schedule_state_and_centre_are_saved():
    dino, cfg = _build("dino")
    assert dino.momentum_steps == cfg.train.max_steps  # ${train.max_steps} by default
    assert cosine_momentum(0, 100, 0.996) == 0.996
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == 1.0
    assert cosine_momentum(7, None, 0.99) == 0.99
    dino(_batch())
    state = dino.state_dict()
    assert {"criterion.center", "ema_steps"} <= set(state)
    assert any(k.startswith("teacher.module.encoder.") for k in state)
    assert state["criterion.center"].abs().sum() > 0  # updated in training mode


def test_ema_teacher_is_frozen_copy():
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(5.0)
    teacher.update(student, 0.0)
    assert torch.equal(teacher.module[0].weight, student[0].weight)
    assert torch.equal(teacher.module[1].running_mean, student[1].running_mean)
    with pytest.raises(ValueError, match="momentum"):
        teacher.update(student, 1.5)


def test_encode_any_size_is_encode_at_native_size_and_handles_local_crops():
    cfg = load_config(None, TINY)
    encoder = create_backbone(cfg.model, 16, 1).eval()
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(encode_any_size(encoder, x), encode(encoder, x))
    assert encode_any_size(encoder, torch.rand(2, 1, 8, 8), "cls").shape == (2, encoder.embed_dim)
    with pytest.raises(ValueError, match="divisible"):
        encode_any_size(encoder, torch.rand(2, 1, 6, 6))


@pytest.mark.parametrize("channels", [1, 3])
def test_views_are_keyed_by_sample_seeds_differ_across_samples_and_stay_in_range(channels):
    same = torch.rand(1, channels, 32, 32).expand(6, -1, -1, -1).contiguous()
    views = TwoViews(16, random_field_strength=0.5)
    seeds = torch.arange(100, 106)
    torch.manual_seed(5)
    v1, v2 = views(same, sample_seeds=seeds)
    torch.manual_seed(6)  # the global RNG plays no part once the seeds are given
    w1, w2 = views(same, sample_seeds=seeds.clone())
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert v1.shape == (6, channels, 16, 16)
    assert 0.0 <= v1.min() and v1.max() <= 1.0
    assert not torch.allclose(v1, v2)
    assert all(not torch.allclose(v1[0], v1[i]) for i in range(1, 6))
    other = views(same, sample_seeds=seeds + 6)
    assert not torch.allclose(other[0], v1) and not torch.allclose(other[1], v2)
    # without seeds they are drawn from the global RNG: random, and fixed by torch.manual_seed
    torch.manual_seed(5)
    f1, f2 = views(same)
    torch.manual_seed(5)
    g1, g2 = views(same)
    assert torch.equal(f1, g1) and torch.equal(f2, g2) and not torch.allclose(f1, v1)
    with pytest.raises(ValueError, match="sample_seeds"):
        views(same, sample_seeds=seeds[:3])


def _all_on(**kwargs):
    """Every augmentation switched on, then ``kwargs``."""
    on = {"random_field_strength": 0.5, "blur_prob": 1.0, "noise_prob": 1.0, "jitter_prob": 1.0}
    return on | kwargs


@pytest.mark.parametrize(
    ("views", "exact"),
    [
        (TwoViews(16, **_all_on()), False),
        (MultiCrop(16, 8, n_local=2, **_all_on()), False),
        (TwoViews(16, **_all_on(blur_prob=0.0)), True),
    ],
    ids=["two_views", "multi_crop", "two_views_no_blur"],
)
def test_a_samples_views_do_not_depend_on_the_rest_of_its_batch(views, exact):
    """Sample 2's views, alone, in a batch of 4 or in a batch of 8 with the same seed, are the
    same (bit for bit without blur; the batched blur convolution may round differently, ~1e-7);
    another seed gives other views."""
    images = torch.rand(8, 1, 32, 32)
    seeds = torch.randint(0, 2**62, (8,), generator=torch.Generator().manual_seed(0))
    full, four, alone = (views(images[k], sample_seeds=seeds[k]) for k in (slice(8), slice(4), [2]))
    reseeded = views(images[[2]], sample_seeds=seeds[[2]] + 1)
    for f, q, a, r in zip(full, four, alone, reseeded, strict=True):
        if exact:
            assert torch.equal(f[2:3], a) and torch.equal(f[:4], q)
        torch.testing.assert_close(f[2:3], a, rtol=0, atol=1e-6)
        torch.testing.assert_close(f[:4], q, rtol=0, atol=1e-6)
        assert (r - a).abs().max() > 0.05
    # the random parameters themselves are bitwise per sample
    theta_all = crop_flip_theta(8, (32, 32), sample_seeds=seeds)
    assert torch.equal(theta_all[2:3], crop_flip_theta(1, (32, 32), sample_seeds=seeds[2:3]))


def test_mix_seeds_and_view_seeds_give_distinct_reproducible_streams():
    seeds = torch.tensor([0, 1, 2**62, -5])
    mixed = mix_seeds(seeds, 3)
    assert mixed.dtype == torch.int64 and (mixed >= 0).all()
    assert torch.equal(mixed, mix_seeds(seeds.clone(), 3))
    streams = torch.stack([mix_seeds(seeds, k) for k in range(4)] + [seeds])
    assert len(set(streams.flatten().tolist())) == streams.numel()
    assert not torch.equal(view_seeds(seeds, 0), view_seeds(seeds, 1))


def test_objectives_draw_their_views_from_the_batchs_sample_seeds():
    """SimCLR and DINO: the same images and ``sample_seed`` give the same loss whatever the global
    RNG; other seeds give other views (another loss); a plain views callable still works."""
    for name in ("simclr", "dino"):
        torch.manual_seed(0)
        objective, _ = _build(name)
        objective.eval()  # no centre update, so repeated forwards are comparable
        batch = {**_batch(), "sample_seed": torch.arange(4)}

        def loss(global_seed, shift, objective=objective, batch=batch):
            torch.manual_seed(global_seed)
            with torch.no_grad():
                return float(
                    objective({**batch, "sample_seed": batch["sample_seed"] + shift})["loss"]
                )

        assert loss(1, 0) == loss(2, 0) != loss(1, 10), name
    calls = []

    def plain(images):
        calls.append(len(images))
        return images, images.flip(-1)

    assert call_views(plain, torch.rand(2, 1, 4, 4), torch.arange(2))[0].shape == (2, 1, 4, 4)
    assert calls == [2]


def test_multicrop_shapes():
    crops = MultiCrop(16, 8, n_local=3)(torch.rand(2, 3, 16, 16))
    assert [tuple(c.shape) for c in crops] == [(2, 3, 16, 16)] * 2 + [(2, 3, 8, 8)] * 3


def test_full_crop_is_identity_and_flip_mirrors():
    x = torch.rand(3, 2, 8, 8)
    full = random_resized_crop(x, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0)
    assert torch.allclose(full, x, atol=1e-5)
    flipped = random_resized_crop(x, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    # a crop of a quarter of the area (4 x 4 pixels of 8 x 8) resized to 2 x 2: on a horizontal
    # ramp (bilinear is exact on it), neighbouring output columns are 2 input pixels apart
    ramp = torch.arange(8.0).expand(5, 1, 8, 8)
    crop = random_resized_crop(ramp, 2, scale=(0.25, 0.25), ratio=(1.0, 1.0), flip_prob=0.0)
    assert torch.allclose(crop[..., 1] - crop[..., 0], torch.full((5, 1, 2), 2.0), atol=1e-4)
    assert torch.allclose(crop[..., 0, :], crop[..., 1, :])
    assert crop.min() >= 0.5 and crop.max() <= 6.5  # sample centres lie inside the image
    crop = random_resized_crop(ramp, 2, scale=(0.25, 0.25), ratio=(1.0, 1.0), flip_prob=1.0)
    assert torch.allclose(crop[..., 1] - crop[..., 0], torch.full((5, 1, 2), -2.0), atol=1e-4)


def test_blur_is_per_sample_and_preserves_constants():
    x = torch.zeros(2, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = gaussian_blur(x, torch.tensor([1e-3, 1.0]))
    assert torch.allclose(out[0], x[0], atol=1e-6)  # tiny sigma: unchanged
    assert out[1, 0, 4, 4] < 0.2 and out[1].sum().item() == pytest.approx(1.0, rel=1e-5)
    alone = gaussian_blur(x[1:], torch.tensor([1.0]))
    assert torch.allclose(out[1:], alone, atol=1e-6)
    flat = torch.full((1, 3, 5, 5), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([2.0])), flat, atol=1e-6)


def test_intensity_identity_and_jitter_changes_contrast():
    x = torch.rand(2, 1, 8, 8)
    one, zero = torch.ones(2), torch.zeros(2)
    assert torch.allclose(adjust_intensity(x, zero, one, one), x)
    low = adjust_intensity(x, zero, torch.full((2,), 0.5), one)
    assert torch.allclose(low.std(dim=(1, 2, 3)), 0.5 * x.std(dim=(1, 2, 3)), rtol=1e-4)
    plain = Augment(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0)
    plain.blur_prob = plain.noise_prob = 0.0
    assert torch.allclose(plain(x), x, atol=1e-5)


class _StopTrainingError(Exception):
    pass


def _train_tiny(name, out_dir, stop_after_batches=None, extra=()):
    from medfm.data.loader import in_memory_batches
    from medfm.train.engine import train

    cfg = load_config(
        None,
        [
            *TINY,
            f"ssl.objective={name}",
            "train.max_steps=4",
            "train.batch_size=4",
            "train.checkpoint_every=2",
            "train.warmup_steps=1",
            "train.progress=false",
            *extra,
        ],
    )
    torch.manual_seed(0)
    objective = build_objective(create_backbone(cfg.model, 16, 1), cfg.ssl, cfg.model.pooling)
    data, meta = (
        torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)),
        torch.arange(8.0),
    )
    served = []

    def get_batch(idx):
        if stop_after_batches is not None and len(served) == stop_after_batches:
            raise _StopTrainingError
        served.append(idx)
        idx = torch.as_tensor(idx)
        return {"image": data[idx], "meta": meta[idx]}

    torch.manual_seed(1)
    try:
        batches = in_memory_batches(get_batch, len(data), 4, int(cfg.seed), 4)
        train(objective, batches, cfg, out_dir)
    except _StopTrainingError:
        pass
    return objective.state_dict()


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("dino", ()),
        ("simclr", ()),
        ("dinov2", ("ssl.ibot_mask_prob=1.0",)),  # centres, teacher, iBOT masks
        ("dinov2", ("ssl.dinov2_centering=sinkhorn_knopp", "ssl.ibot_separate_head=true")),
        ("cae", ("ssl.cae_target=ema",)),  # block masks, EMA target
        ("sit", ("ssl.random_field_affine_strength=0.5",)),  # rotations, groups, donors
        ("anatcl", ("ssl.anatcl_standardize=batch", "ssl.anatcl_variant=local")),
    ],
    ids=["dino", "simclr", "dinov2", "dinov2_sinkhorn", "cae_ema", "sit", "anatcl"],
)
def test_a_resumed_run_replays_the_views_and_teacher_of_an_uninterrupted_one(name, extra, tmp_path):
    """Views (and masks) are drawn from each batch's ``sample_seed``, a function of (seed, step,
    position), so a resumed run sees the views of the uninterrupted one: resuming is bit-exact."""
    whole = _train_tiny(name, tmp_path / "whole", extra=extra)
    cut = _train_tiny(name, tmp_path / "cut", stop_after_batches=3, extra=extra)  # ckpt at 2
    assert not all(torch.equal(whole[k], cut[k]) for k in whole)
    resumed = _train_tiny(name, tmp_path / "cut", extra=extra)
    assert list(whole) == list(resumed)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
