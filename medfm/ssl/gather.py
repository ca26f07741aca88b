"""Collectives that objectives need under data parallelism, without importing the training engine.

Contrastive objectives compare every query with every key of the *global* batch, as SimCLR does
on TPUs with cross-replica negatives (Chen et al. 2020, "A Simple Framework for Contrastive
Learning of Visual Representations", section 2.2 "Training with large batch size"). Under DDP each
process holds only its share of the batch, so keys are all-gathered with gradients by
:func:`gather_with_grad`. The reference design is lightly's ``gather_distributed``
(``lightly.utils.dist.GatherLayer``): an autograd function whose forward all-gathers and whose
backward all-reduces (sums) the incoming gradient and returns this rank's slice.

Why the sum is right: rank ``r`` computes ``L_r``, the mean loss of its own queries against all
gathered keys, and the full batch's loss is ``L = mean_r L_r`` (every rank has as many queries).
Rank ``r``'s embeddings enter every ``L_r'`` as keys, so the gradient DDP needs on rank ``r`` is
``d(sum_r' L_r') / dx_r``: the all-reduce in the backward sums those key contributions (the query
path of ``L_r`` stays local). DDP then *averages* parameter gradients over the ``W`` ranks,
``(1 / W) d(sum_r' L_r') / dtheta = dL / dtheta``: no extra scaling of the per-rank loss is needed,
and 2 processes at a global batch ``B`` take the step 1 process takes at ``B``.

Every function is the identity (or a no-op) when ``torch.distributed`` is not initialised or the
world has one process. All ranks must call them in the same order with equal-sized batches (the
engine shards the global batch evenly). Tensors stay on their device, so NCCL (CUDA) works.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group; 1 when ``torch.distributed`` is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group; 0 when not initialised."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradients over ranks and keeps this rank's slice
    (lightly's ``GatherLayer``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        stacked = torch.stack(grads)  # (W, *x.shape)
        dist.all_reduce(stacked)  # sum of every rank's gradient w.r.t. every slice
        return stacked[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``(b, ...)`` on each of ``W`` ranks -> ``(W * b, ...)``, rank 0's rows first, with a
    gradient that flows back to every rank's ``x`` (see the module docstring).

    Example (one process: the identity):
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> gather_with_grad(x) is x
        True
    """
    if world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x))


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """:func:`gather_with_grad` without autograd (e.g. metadata that needs no gradient)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (a new tensor; ``x`` itself is unchanged)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x.div_(world_size())
