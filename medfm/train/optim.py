"""AdamW without weight decay on norms, biases and embeddings, and a warmup + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch import nn

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token")


def param_groups(
    model: nn.Module, weight_decay: float, lr_scale: Callable[[str], float] | None = None
) -> list[dict]:
    """Matrices with ``weight_decay``; 1-D params (norms, biases) and tokens without.

    Without ``lr_scale`` that is two groups. With it (``name -> factor``, e.g. layer-wise LR
    decay), parameters are grouped by (decay, factor) and each group carries ``lr_scale`` for
    :func:`build_optimizer`.
    """
    groups: dict[tuple[bool, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = (
            param.ndim <= 1 or name.endswith(".bias") or any(t in name for t in _NO_DECAY_NAMES)
        )
        scale = float(lr_scale(name)) if lr_scale else 1.0
        groups.setdefault((no_decay, scale), []).append(param)
    if lr_scale is None:
        return [
            {"params": groups.get((False, 1.0), []), "weight_decay": weight_decay},
            {"params": groups.get((True, 1.0), []), "weight_decay": 0.0},
        ]
    return [
        {"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr_scale": scale}
        for (nd, scale), ps in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


def warmup_cosine(step: int, warmup: int, total: int, base_lr: float, min_lr: float) -> float:
    """Linear warmup over ``warmup`` steps to ``base_lr``, then cosine decay to ``min_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """The LR factor of a step under :func:`warmup_cosine`, relative to ``base_lr``.

    A callable object rather than a lambda: ``LambdaLR.state_dict()`` saves such an object's
    attributes, so a ``total`` fitted to ``train.max_minutes`` (:mod:`medfm.train.budget`) is in
    the checkpoint. ``budget`` is the ``[max_steps, max_minutes]`` it was fitted for (None: not
    fitted); :meth:`follow` decides, on resume, whether the saved plan still holds."""

    def __init__(self, warmup: int, total: int, base_lr: float, min_lr: float) -> None:
        self.warmup, self.total, self.base_lr, self.min_lr = warmup, total, base_lr, min_lr
        self.budget: list | None = None

    @classmethod
    def from_config(cls, train_cfg: DictConfig) -> WarmupCosine:
        """``train.warmup_steps``, ``max_steps``, ``lr`` and ``min_lr``."""
        return cls(
            int(train_cfg.warmup_steps),
            int(train_cfg.max_steps),
            float(train_cfg.lr),
            float(train_cfg.min_lr),
        )

    def follow(self, train_cfg: DictConfig) -> None:
        """After a checkpoint's state was loaded: take this config's schedule, keeping the saved
        fitted ``total`` only when it was fitted for this config's budget (an exact resume);
        a run resumed with another ``max_steps`` or ``max_minutes`` follows the new ones."""
        saved_total, saved_budget = self.total, self.budget
        self.__dict__.update(WarmupCosine.from_config(train_cfg).__dict__)
        if saved_budget is not None and saved_budget == budget_of(train_cfg):
            self.total, self.budget = saved_total, saved_budget

    def __call__(self, step: int) -> float:
        if not self.base_lr:  # train.lr=0 freezes everything
            return 0.0
        lr = warmup_cosine(step, self.warmup, self.total, self.base_lr, self.min_lr)
        return lr / self.base_lr


def budget_of(train_cfg: DictConfig) -> list:
    """``[max_steps, max_minutes]``: what a fitted schedule was planned for (``max_minutes``
    None when there is none, or ``train.fit_schedule_to_minutes`` is off: no plan matches)."""
    minutes = train_cfg.get("max_minutes")
    fit = minutes and train_cfg.get("fit_schedule_to_minutes", True)
    return [int(train_cfg.max_steps), float(minutes) if fit else None]


def build_optimizer(
    model: nn.Module, train_cfg: DictConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW + warmup-cosine. A model with a ``lr_scale(param_name) -> float`` method (e.g. a
    fine-tuning classifier with layer-wise LR decay) gets its per-parameter factors. The
    schedule's :class:`WarmupCosine` is ``scheduler.lr_lambdas[0]`` (shared by every group)."""
    base_lr = float(train_cfg.lr)
    groups = param_groups(model, float(train_cfg.weight_decay), getattr(model, "lr_scale", None))
    for group in groups:
        group["lr"] = base_lr * group.pop("lr_scale", 1.0)
    opt = torch.optim.AdamW(groups, lr=base_lr, betas=tuple(train_cfg.betas))
    factor = WarmupCosine.from_config(train_cfg)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
