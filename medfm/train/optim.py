"""AdamW without weight decay on norms, biases and embeddings, and a warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices with ``weight_decay``; 1-D params (norms, biases) and tokens without."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or any(t in name for t in _NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup: int, total: int, base_lr: float, min_lr: float) -> float:
    """Linear warmup over ``warmup`` steps to ``base_lr``, then cosine decay to ``min_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module, train_cfg: DictConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    base_lr = float(train_cfg.lr)
    opt = torch.optim.AdamW(
        param_groups(model, float(train_cfg.weight_decay)), lr=base_lr, betas=tuple(train_cfg.betas)
    )
    warmup, total, min_lr = (
        int(train_cfg.warmup_steps),
        int(train_cfg.max_steps),
        float(train_cfg.min_lr),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, warmup, total, base_lr, min_lr) / base_lr
    )
    return opt, schedule
