import math

import pytest

from medfm.config import load_config
from medfm.models.backbones import create_backbone
from medfm.train.optim import build_optimizer, param_groups, warmup_cosine


def test_no_weight_decay_on_norms_biases_and_tokens():
    model = create_backbone(load_config(None, ["model.depth=1"]).model, 16, 1)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "blocks.0.attn.qkv.weight" in decayed
    assert not any(n.endswith(".bias") or "norm" in n or n == "cls_token" for n in decayed)
    assert all(p.requires_grad for p in decay["params"] + no_decay["params"])  # pos_embed frozen


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 110, 1.0, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 1.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(35, 10, 110, 2.0, 0.0) == pytest.approx(1.0 + math.cos(math.pi / 4))


def test_scheduler_follows_the_schedule():
    cfg = load_config(
        None,
        [
            "model.depth=1",
            "train.lr=0.01",
            "train.warmup_steps=2",
            "train.max_steps=4",
            "train.min_lr=0.0",
        ],
    )
    model = create_backbone(cfg.model, 16, 1)
    opt, sched = build_optimizer(model, cfg.train)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.005, 0.01, 0.01, 0.005])


def test_steps_that_fit_the_rest_of_the_budget():
    from medfm.train.budget import steps_that_fit

    # 0.97 * 60 s - 12 s = 46.2 s at 1 s a step: 46 more steps after the 11 done
    assert steps_that_fit(11, 12.0, 1.0, 1.0, 1000) == 57
    assert steps_that_fit(11, 12.0, 0.5, 1.0, 1000) == 11 + 92
    assert steps_that_fit(11, 12.0, 1.0, 1.0, 30) == 30  # never past max_steps
    assert steps_that_fit(11, 70.0, 1.0, 1.0, 1000) == 12  # over budget already: stop next step
    assert steps_that_fit(30, 70.0, 1.0, 1.0, 30) == 30  # and never past max_steps then


def test_a_fitted_schedule_travels_with_the_scheduler_state_for_the_same_budget():
    cfg = load_config(None, ["model.depth=1", "train.max_steps=100", "train.warmup_steps=0"])
    model = create_backbone(cfg.model, 16, 1)
    _, sched = build_optimizer(model, cfg.train)
    factor = sched.lr_lambdas[0]
    factor.total, factor.budget = 10, [100, None]
    assert factor(5) == pytest.approx(warmup_cosine(5, 0, 10, 1.5e-3, 1e-5) / 1.5e-3)
    _, fresh = build_optimizer(model, cfg.train)
    fresh.load_state_dict(sched.state_dict())
    fresh.lr_lambdas[0].follow(cfg.train)
    assert (fresh.lr_lambdas[0].total, fresh.lr_lambdas[0].budget) == (10, [100, None])
    assert all(f is fresh.lr_lambdas[0] for f in fresh.lr_lambdas)

    longer = load_config(None, ["model.depth=1", "train.max_steps=200", "train.lr=0.01"])
    _, other = build_optimizer(model, longer.train)
    other.load_state_dict(sched.state_dict())
    other.lr_lambdas[0].follow(longer.train)  # another budget: the new config's schedule
    assert vars(other.lr_lambdas[0]) == vars(build_optimizer(model, longer.train)[1].lr_lambdas[0])
    assert (other.lr_lambdas[0].total, other.lr_lambdas[0].base_lr) == (200, 0.01)

    fitted = load_config(None, ["model.depth=1", "train.max_steps=100", "train.max_minutes=3"])
    factor.budget = [100, 3.0]
    for fit, total in ((True, 10), (False, 100)):  # switched off on resume: the plan is dropped
        cfg_fit = fitted.copy()
        cfg_fit.train.fit_schedule_to_minutes = fit
        _, resumed = build_optimizer(model, cfg_fit.train)
        resumed.load_state_dict(sched.state_dict())
        resumed.lr_lambdas[0].follow(cfg_fit.train)
        assert resumed.lr_lambdas[0].total == total
