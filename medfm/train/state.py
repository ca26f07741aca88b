"""What the training loop carries between steps: the model, its optimiser, where it writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from medfm.train import distributed as D


@dataclasses.dataclass
class RunState:
    """What the loop carries between steps."""

    objective: nn.Module
    model: nn.Module  # the objective, wrapped in DDP when distributed
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    info: D.DistInfo
    out_dir: Path
    last_good: int | None = None
    best: dict | None = None
    logged_until: int = 0  # a resumed run: steps up to here were logged before the interruption
