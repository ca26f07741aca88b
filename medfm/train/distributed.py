"""torch.distributed helpers: one process per device, launched by ``torchrun`` (or SLURM's srun).

``torchrun --nproc_per_node=N -m medfm pretrain ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` then joins the process group (gloo on CPU, NCCL on CUDA). Without those
variables everything runs as a single process.

Every collective here runs on the backend's device (``DistInfo.device``: the process's GPU under
NCCL, which only communicates CUDA tensors; the CPU under gloo). Objectives gather their own
tensors with :mod:`medfm.ssl.gather` (negatives with gradients, DINO's centre), which this module
does not import so the objectives never depend on the training code.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in a ``torchrun`` job (rank, world size, device); rank 0 of 1
    without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun/SLURM; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world <= 1:
        return DistInfo(device=device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``tensor`` over all ranks, computed on ``info.device`` (NCCL needs CUDA
    tensors) and returned on ``tensor``'s device; ``tensor`` itself is unchanged."""
    if not info.enabled:
        return tensor
    t = tensor.detach().to(info.device, copy=True)
    dist.all_reduce(t)
    return (t / info.world_size).to(tensor.device)


def mean_across(value: float, info: DistInfo) -> float:
    """Average of a Python float over all ranks (identity in a single process), reduced in
    float64 on ``info.device``."""
    if not info.enabled:
        return value
    return float(all_reduce_mean(torch.tensor([value], dtype=torch.float64), info).item())


def maybe_sync_batchnorm(model: nn.Module, enabled: bool, info: DistInfo) -> nn.Module:
    """``model`` with its BatchNorm layers (the projector heads') as :class:`nn.SyncBatchNorm`,
    when ``enabled`` (``train.sync_batchnorm``) and distributed on CUDA; otherwise ``model``.

    SyncBatchNorm normalises with the statistics of the global batch instead of each process's
    share, so N processes' BatchNorm matches one process's at the same global batch. Call it
    before wrapping in DDP. The conversion keeps the parameter tensors, so an optimiser already
    built keeps working.

    CPU: torch (2.x) implements SyncBatchNorm for CUDA (and XPU/HPU/privateuse1) only; its forward
    raises ``ValueError`` on a CPU tensor under gloo. On a distributed CPU run the model is
    therefore left unchanged, with a warning, and BatchNorm statistics stay per process.
    """
    if not (enabled and info.enabled):
        return model
    if info.device.type != "cuda":
        log.warning(
            "train.sync_batchnorm=true is ignored on %s: torch's SyncBatchNorm needs CUDA; "
            "BatchNorm statistics stay per process",
            info.device.type,
        )
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` on every rank (``[obj]`` in a single process).

    Under NCCL the pickled objects travel as CUDA tensors of the current device, which
    :func:`init_distributed` set to this rank's GPU."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled:
        dist.barrier()
