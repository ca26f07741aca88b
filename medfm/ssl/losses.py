"""Contrastive and self-distillation losses.

- :func:`info_nce`: NT-Xent of SimCLR (Chen et al. 2020, "A Simple
  Framework for Contrastive Learning of Visual Representations").
- :func:`metadata_weighted_info_nce`: y-aware InfoNCE (Dufumier et al. 2021, "Contrastive
  Learning with Continuous Proxy Meta-Data for 3D MRI Classification"; used again in AnatCL):
  positives weighted by a Gaussian kernel on continuous metadata such as age;
  :func:`kernel_weighted_info_nce`: the same with any kernel between samples (AnatCL).
- :func:`dino_loss` / :class:`DINOLoss`: self-distillation cross-entropy of DINO (Caron et al.
  2021, "Emerging Properties in Self-Supervised Vision Transformers").

Under DDP the contrastive losses take ``gather_distributed=True``: negatives come from the global
batch, all-gathered with gradients as in lightly's ``gather_distributed`` (:mod:`medfm.ssl.gather`),
and DINO's centre is the global batch's mean; so N processes at a global batch ``B`` compute the
loss (and, after DDP's gradient averaging, the step) of one process at ``B``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medfm.ssl import gather as G


def _similarity_logits(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather_distributed: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-similarity logits of this process's ``2b`` queries ``[z1; z2]`` against the ``2B``
    keys ``[Z1; Z2]`` of the global batch, over ``temperature``; each query's own key is -inf.

    Without ``gather_distributed`` (or in one process) ``Z = z``, ``B = b`` and the logits are the
    usual ``(2B, 2B)`` matrix. With it, under ``torch.distributed``, ``Z1``/``Z2`` are every rank's
    normalised ``z1``/``z2`` concatenated in rank order (:func:`~medfm.ssl.gather.gather_with_grad`,
    with gradients), so this rank's sample ``i`` is global sample ``rank * b + i``.

    Returns:
        ``logits`` ``(2b, 2B)`` and ``targets`` ``(2b,)``: the column of each query's positive
        (the other view of the same sample).
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (B, D); got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q1, q2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)  # (b, D) each
    b, offset = len(q1), 0
    k1, k2 = q1, q2
    if gather_distributed and G.world_size() > 1:
        k1, k2, offset = G.gather_with_grad(q1), G.gather_with_grad(q2), G.rank() * b
    n = len(k1)  # the global batch B
    logits = torch.cat([q1, q2]) @ torch.cat([k1, k2]).T / temperature  # (2b, 2B)
    mine = torch.arange(offset, offset + b, device=logits.device)  # global sample indices
    own = torch.cat([mine, mine + n])  # each query's own column
    columns = torch.arange(2 * n, device=logits.device)
    logits = logits.masked_fill(own[:, None] == columns[None, :], float("-inf"))
    return logits, torch.cat([mine + n, mine])


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.2,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """NT-Xent loss (Chen et al. 2020) over the ``2B`` embeddings of two views.

    Sample ``i`` of ``z1`` and sample ``i`` of ``z2`` are a positive pair; every other of the
    ``2B - 2`` embeddings is a negative. With cosine similarity ``s`` and anchor ``a`` whose
    positive is ``p(a)``::

        loss = mean over the 2B anchors a of
               -log( exp(s[a, p(a)] / t) / sum_{k != a} exp(s[a, k] / t) )

    Args:
        z1, z2: ``(B, D)`` embeddings (need not be normalised), ``B >= 1``.
        temperature: ``t`` > 0; lower is sharper.
        gather_distributed: under ``torch.distributed``, take the negatives from every rank's
            embeddings, gathered with gradients (lightly's ``gather_distributed``; see
            :mod:`medfm.ssl.gather`). ``z1, z2`` are then this rank's ``(b, D)`` share of the
            global batch and the loss is the mean over this rank's ``2b`` anchors, so its mean
            over ranks (and DDP's averaged gradient) equals the one-process loss on the global
            batch. A no-op in one process.
    Returns:
        0-dim loss. Its minimum, ``log(1)`` for perfectly separated pairs, is approached as
        ``t -> 0``; with ``B = 1`` it is exactly 0.
    """
    logits, targets = _similarity_logits(z1, z2, temperature, gather_distributed)
    return F.cross_entropy(logits, targets)


def metadata_weighted_info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    meta: torch.Tensor,
    temperature: float = 0.2,
    sigma: float = 1.0,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """y-aware InfoNCE (Dufumier et al. 2021) with continuous metadata ``y`` (e.g. age).

    Over the ``2B`` embeddings ``[z1; z2]`` (metadata repeated), anchor ``a`` gives every other
    embedding ``k`` the weight ``w[a, k] = exp(-(y_a - y_k)**2 / (2 sigma**2))``, normalised
    so ``sum_{k != a} w[a, k] = 1``; the loss is the weighted cross-entropy::

        loss = mean over a of  -sum_{k != a} w[a, k] * log softmax_{k != a}(s[a, k] / t)

    The other view of the same sample always has weight ``exp(0) = 1`` before normalisation.
    As ``sigma -> 0`` (distinct metadata) only that view remains and this is :func:`info_nce`;
    as ``sigma -> inf`` all embeddings are equally positive. Dufumier et al.'s code sums over
    the ``2B`` anchors and divides by ``B``, which is twice this mean.

    Args:
        z1, z2: ``(B, D)`` embeddings of two views.
        meta: ``(B,)`` float metadata, in the units of ``sigma``.
        temperature: softmax temperature > 0.
        sigma: kernel width > 0, in metadata units.
        gather_distributed: as :func:`info_nce`: under ``torch.distributed`` the keys (and their
            metadata) are every rank's, gathered; the loss is over this rank's anchors.
    Returns:
        0-dim loss.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if meta.numel() != z1.shape[0]:
        raise ValueError(f"meta must have shape (B,) = ({z1.shape[0]},), got {tuple(meta.shape)}")
    y = meta.reshape(-1).to(z1)  # (b,)
    y_keys = G.gather_no_grad(y) if gather_distributed else y  # (B,)
    kernel = torch.exp(-((y[:, None] - y_keys[None, :]) ** 2) / (2 * sigma**2))  # (b, B)
    return kernel_weighted_info_nce(z1, z2, kernel, temperature, gather_distributed)


def kernel_weighted_info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    kernel: torch.Tensor,
    temperature: float = 0.2,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """InfoNCE whose positives are weighted by any kernel between samples: the weighted
    cross-entropy of :func:`metadata_weighted_info_nce` with ``kernel[i, j]`` in place of its
    Gaussian on one metadata value (AnatCL's kernels, :mod:`medfm.ssl.anatcl`).

    Anchor ``a`` (either view of sample ``i``) weighs every other embedding ``k`` (either view of
    sample ``j``) by ``kernel[i, j]``, normalised over ``k != a``; the other view of ``i`` gets
    ``kernel[i, i]`` (1 for a Gaussian kernel)::

        loss = mean over a of  -sum_{k != a} w[a, k] * log softmax_{k != a}(s[a, k] / t)

    Args:
        z1, z2: ``(b, D)`` embeddings of two views.
        kernel: ``(b, B)`` non-negative weights of this rank's ``b`` samples (rows) against the
            ``B`` samples of the global batch (columns in rank order, as the gathered keys; ``B =
            b`` in one process), or ``(K, b, B)``: ``K`` kernels, the loss the mean of the ``K``
            losses (the similarities computed once). Each row needs a positive weight off itself.
        temperature, gather_distributed: as :func:`info_nce`.
    Returns:
        0-dim loss.
    """
    logits, _ = _similarity_logits(z1, z2, temperature, gather_distributed)  # (2b, 2B)
    kernels = kernel if kernel.ndim == 3 else kernel.unsqueeze(0)
    b, n = len(z1), logits.shape[1] // 2
    if kernels.ndim != 3 or kernels.shape[1:] != (b, n):
        raise ValueError(f"kernel must be ({b}, {n}) or (K, {b}, {n}), got {tuple(kernel.shape)}")
    own = torch.isinf(logits)  # each anchor's own column
    weights = kernels.to(logits).repeat(1, 2, 2).masked_fill(own, 0.0)  # (K, 2b, 2B)
    weights = weights / weights.sum(dim=2, keepdim=True)
    log_prob = F.log_softmax(logits, dim=1).masked_fill(own, 0.0)
    return -(weights * log_prob).sum(dim=2).mean()


def dino_loss(
    student_out: Sequence[torch.Tensor],
    teacher_out: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO self-distillation loss (Caron et al. 2021).

    The teacher's outputs are centred and sharpened, ``q = softmax((t - center) / teacher_temp)``
    (no gradient), the student's are ``log p = log_softmax(s / student_temp)``; the loss is the
    mean of ``-sum_K q * log p`` over the batch and over every (teacher view ``i``, student view
    ``v``) pair with ``v != i``. Teacher view ``i`` and student view ``i`` are the same crop
    (the global crops come first in ``student_out``).

    Args:
        student_out: ``V`` tensors ``(B, K)``: 2 global crops, then local crops.
        teacher_out: ``G`` tensors ``(B, K)`` (``G <= V``, usually 2): the global crops.
        center: ``(K,)`` or ``(1, K)`` running mean of teacher outputs.
    Returns:
        0-dim loss. For one pair it is minimal, equal to the entropy of ``q``, when
        ``softmax(s / student_temp) == q``.
    """
    pairs = [(i, v) for i in range(len(teacher_out)) for v in range(len(student_out)) if v != i]
    if not pairs:
        raise ValueError("dino_loss needs at least two views (one teacher, one other student)")
    log_p = [F.log_softmax(s / student_temp, dim=-1) for s in student_out]
    q = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher_out]
    total = sum((-q[i] * log_p[v]).sum(dim=-1).mean() for i, v in pairs)
    return total / len(pairs)


class DINOLoss(nn.Module):
    """:func:`dino_loss` with its centre as a buffer (saved in checkpoints).

    ``forward(student_out, teacher_out)`` -> loss. The centre is updated separately, by
    :meth:`update_center`, with an EMA of the teacher's batch mean (averaged over ranks under
    DDP): ``center <- m * center + (1 - m) * mean(teacher)``.
    """

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_out: Sequence[torch.Tensor], teacher_out: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """``V`` student and ``G`` teacher outputs ``(B, K)`` -> 0-dim loss (Caron et al. 2021)."""
        return dino_loss(
            student_out, teacher_out, self.center, self.student_temp, self.teacher_temp
        )

    @torch.no_grad()
    def update_center(self, teacher_out: Sequence[torch.Tensor]) -> None:
        """Move the teacher centre towards the global batch mean of ``teacher_out`` (EMA)."""
        batch_mean = torch.cat(list(teacher_out)).to(self.center).mean(dim=0, keepdim=True)
        batch_mean = G.all_reduce_mean(batch_mean)  # the global batch's mean under DDP
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)
