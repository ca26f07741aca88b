"""Exponential-moving-average teacher (BYOL, Grill et al. 2020; DINO, Caron et al. 2021)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int | None, base: float, final: float = 1.0) -> float:
    """EMA momentum rising from ``base`` at step 0 to ``final`` at ``total_steps`` along a
    half cosine (DINO); ``base`` throughout when ``total_steps`` is None or 0; ``final`` after.

    Example:
        >>> cosine_momentum(0, 100, 0.996), cosine_momentum(100, 100, 0.996)
        (0.996, 1.0)
    """
    if not total_steps:
        return base
    progress = min(1.0, max(0, step) / total_steps)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class EMATeacher(nn.Module):
    """A frozen deep copy of ``student`` that follows it by EMA.

    The copy's parameters have ``requires_grad=False`` (so optimisers built from the trainable
    parameters skip them) but are registered, so they are saved and restored with the objective's
    ``state_dict``. The copy stays in eval mode whatever ``.train()`` says. ``forward`` runs it
    without gradient.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        """Keep the teacher in eval mode whatever the student's mode."""
        super().train(mode)
        self.module.eval()
        return self

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        """The frozen copy's output, no gradient (as DINO's teacher: ``(B, C, H, W)`` -> ``(B, K)``;
        Caron et al. 2021)."""
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter;
        buffers (e.g. BatchNorm statistics) are copied."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        pairs = zip(self.module.parameters(), student.parameters(), strict=True)
        for teacher_p, student_p in pairs:
            teacher_p.lerp_(student_p.detach(), 1.0 - momentum)
        for teacher_b, student_b in zip(self.module.buffers(), student.buffers(), strict=True):
            teacher_b.copy_(student_b)
