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
