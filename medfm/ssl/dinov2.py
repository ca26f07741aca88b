"""DINOv2: DINO's image-level self-distillation + iBOT's masked-patch loss + the KoLeo regulariser.

Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision"; the patch loss
is iBOT's (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer"), the
regulariser KoLeo (Sablayrolles et al. 2019, "Spreading vectors for similarity search"), the
optional Sinkhorn-Knopp teacher centring SwAV's (Caron et al. 2020).

With ``B`` images, ``V = 2 + n_local`` crops, ``N`` patches per global crop, ``D`` the encoder
width and ``K`` the number of prototypes:

- **DINO** (:mod:`medfm.ssl.dino`): the student (encoder + :class:`~medfm.ssl.heads.DINOHead`)
  sees the 2 global crops ``(2B, C, [D,] H, W)`` and the local ones, the EMA teacher the global
  crops; the pooled features ``(., D)`` go through the head to ``(., K)``; cross-entropy of the
  student (``student_temp``) against the teacher's centred, sharpened distribution on every pair
  of different crops.
- **iBOT**: a block-wise mask ``(2B, N)`` (:func:`~medfm.ssl.masking.block_mask`) hides part of
  the patches of the student's global crops: their patch embeddings are replaced by a learned mask
  token ``(D,)`` before the position embedding. The student's patch tokens at the ``M`` masked
  positions ``(M, D)`` and the teacher's at the same positions of the *unmasked* crop go through
  the patch head (the DINO head, or its own with ``separate_head``) to ``(M, K)``; the loss is
  the cross-entropy of the student against the teacher's distribution (``teacher_temp``, its own
  centre ``ibot_center``), averaged over each image's masked patches, then over the ``2B`` global
  crops (images without masked patches count as 0), as DINOv2 (:func:`ibot_loss`).
- **KoLeo** on the student's L2-normalised pooled features of each global crop
  ``(B, D)``: ``-mean_i log(min_{j != i} ||x_i - x_j||)`` (:func:`koleo_loss`), summed over the
  2 global crops as DINOv2 does, the nearest neighbour searched over the global batch under DDP.

``loss = loss_dino + ibot_weight * loss_ibot + koleo_weight * loss_koleo``.

Teacher centring (``centering``): ``"centering"`` subtracts an EMA centre (DINO's, one for the
image head and one for the patch head), updated in training-mode forwards with the global batch
mean (all-reduced under DDP); ``"sinkhorn_knopp"`` replaces centre + softmax by
``sinkhorn_iterations`` Sinkhorn-Knopp normalisations of ``exp(teacher / teacher_temp)`` over the
global batch (its row and total sums all-reduced in training-mode forwards, as the KoLeo
neighbour search; in eval mode over this rank's batch with no collective, :func:`sinkhorn_knopp`).

Training-loop contract as :class:`~medfm.ssl.dino.DINO`: call :meth:`DINOv2.on_step_end` after
every optimiser step (the teacher's EMA); the state (teacher, both centres, ``ema_steps``) is in
``state_dict``, and masks and crops are drawn from ``batch["sample_seed"]``, so a resumed run and
N processes replay one uninterrupted process.

What differs from the paper (and its code):

- Masks are drawn per sample (from the sample's seed): each global crop is masked with
  probability ``mask_prob`` at a ratio uniform in ``mask_ratio``; DINOv2 masks exactly
  ``mask_prob`` of the crops of a batch at ratios stratified over the range. Per-sample draws
  keep a sample's mask independent of the batch's split over processes.
- The DINO term averages over every (teacher, student) crop pair with different crops, as
  :func:`~medfm.ssl.losses.dino_loss`; DINOv2 weights the global-global and global-local terms
  slightly differently. No teacher-temperature warm-up, no layer-wise LR decay, no stochastic
  depth schedule, no fp16 specifics; the image feature is ``model.pooling`` (``cls`` as DINOv2,
  or the mean of the patch tokens, masked ones included).
- The KoLeo nearest neighbour is searched over the global batch (DINOv2: per GPU), so the loss
  does not depend on the number of processes.
- The mask token lives in the objective (the encoder saved is a plain timm ViT / ViT3D).
- Sinkhorn-Knopp subtracts the global maximum before ``exp`` (same result, no overflow).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from medfm.ssl import gather as G
from medfm.ssl.dino import Encoder, _pool, tokens_any_size
from medfm.ssl.ema import EMATeacher, cosine_momentum
from medfm.ssl.heads import DINOHead
from medfm.ssl.masking import block_mask
from medfm.ssl.views import MultiCrop, call_views, mix_seeds, resolve_seeds

CENTERINGS = ("centering", "sinkhorn_knopp")
_MASK_STREAM = 2000  # the iBOT mask of global crop v of a sample: stream _MASK_STREAM + v


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (``x`` itself in one process)."""
    return G.all_reduce_mean(x) * G.world_size()


@torch.no_grad()
def sinkhorn_knopp(
    teacher_out: torch.Tensor, teacher_temp: float, iterations: int = 3, distributed: bool = True
) -> torch.Tensor:
    """Sinkhorn-Knopp teacher targets (SwAV; DINOv2's ``sinkhorn_knopp_teacher``).

    ``Q = exp(teacher_out / teacher_temp)^T`` ``(K, n)`` is normalised ``iterations`` times so that
    every prototype (row) gets mass ``1 / K`` and every sample (column) ``1 / B``, ``B`` the global
    batch; with ``distributed`` (and ``torch.distributed`` initialised) row sums, the total and
    ``B`` are summed over ranks, so N processes give the targets of one process on the global
    batch. ``distributed=False`` normalises over this rank's ``n`` samples alone, with no
    collective (evaluation, where ranks need not run in step).

    Args:
        teacher_out: ``(n, K)`` teacher logits of this rank (``n`` may be 0).
    Returns:
        ``(n, K)`` target distributions (each row sums to 1).
    """

    def total(x: torch.Tensor) -> torch.Tensor:
        return _sum_over_ranks(x) if distributed else x

    logits = teacher_out.float() / teacher_temp
    local_max = logits.max().reshape(1) if logits.numel() else logits.new_full((1,), -torch.inf)
    top = (G.gather_no_grad(local_max) if distributed else local_max).max()
    q = torch.exp(logits - (top if torch.isfinite(top) else 0.0)).T  # (K, n)
    n_total = total(torch.tensor(float(q.shape[1]), device=q.device))
    if n_total == 0:
        return q.T
    k = q.shape[0]
    q = q / total(q.sum())
    for _ in range(iterations):
        q = q / total(q.sum(dim=1, keepdim=True)) / k
        q = q / q.sum(dim=0, keepdim=True) / n_total
    return (q * n_total).T.to(teacher_out.dtype)


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """iBOT's masked-patch cross-entropy (Zhou et al. 2022), normalised as DINOv2.

    ``ce_j = -sum_K q_j * log_softmax(s_j / student_temp)`` for each of the ``M`` masked patches
    (rows of ``masks[masks]``, image by image); the loss is ``(1 / n) sum_i mean_{j in image i}
    ce_j``: each image's mean over its masked patches, summed, over all ``n`` images (those
    without masked patches add 0). Under DDP the mean over ranks of this rank's loss is the
    one-process loss (equal shares), so no collective is needed.

    Args:
        student_logits: ``(M, K)`` student patch-head outputs at the masked patches.
        teacher_probs: ``(M, K)`` teacher targets (centred softmax or Sinkhorn-Knopp).
        masks: ``(n, N)`` bool, True = masked; ``M = masks.sum()``.
    """
    log_p = F.log_softmax(student_logits / student_temp, dim=-1)
    per_patch = -(teacher_probs * log_p).sum(dim=-1)  # (M,)
    counts = masks.sum(dim=1)  # (n,)
    weights = (1.0 / counts.clamp_min(1).to(per_patch)).repeat_interleave(counts)  # (M,)
    return (per_patch * weights).sum() / masks.shape[0]


def koleo_loss(
    features: torch.Tensor, eps: float = 1e-8, gather_distributed: bool = False
) -> torch.Tensor:
    """KoLeo (Kozachenko-Leonenko) regulariser (Sablayrolles et al. 2019; DINOv2's ``KoLeoLoss``).

    The rows are L2-normalised; ``loss = -mean_i log(d_i + eps)`` with ``d_i`` the distance
    (``F.pairwise_distance``, whose ``eps`` DINOv2 also uses) from ``x_i`` to its nearest other
    row (found by the largest dot product). The gradient flows through both ``x_i`` and its
    neighbour, as in DINOv2.

    Args:
        features: ``(b, D)``.
        gather_distributed: under ``torch.distributed`` search the neighbours among every rank's
            rows (gathered with gradients, :func:`~medfm.ssl.gather.gather_with_grad`); the loss
            is then over this rank's rows, and its mean over ranks (and DDP's averaged gradient)
            is the one-process loss on the global batch.
    Returns:
        0-dim loss; 0 (with a gradient of 0) when the global batch has a single row.
    """
    q = F.normalize(features, dim=-1, eps=eps)  # (b, D)
    keys, offset = q, 0
    if gather_distributed and G.world_size() > 1:
        keys, offset = G.gather_with_grad(q), G.rank() * len(q)
    if len(keys) < 2:
        return features.sum() * 0.0
    with torch.no_grad():
        sims = q @ keys.T  # (b, B)
        rows = torch.arange(len(q), device=q.device)
        sims[rows, rows + offset] = -torch.inf
        nearest = sims.argmax(dim=1)
    distances = F.pairwise_distance(q, keys[nearest], eps=eps)  # (b,)
    return -torch.log(distances + eps).mean()


def ibot_masks(
    grid: tuple[int, ...],
    sample_seeds: torch.Tensor,
    crop: int,
    mask_prob: float,
    mask_ratio: tuple[float, float],
) -> torch.Tensor:
    """The iBOT masks of global crop ``crop`` of each sample: ``(B,)`` seeds -> ``(B, N)`` bool.

    Sample ``i`` is masked with probability ``mask_prob``, with ``int(N * r)`` patches for ``r``
    uniform in ``mask_ratio``, by :func:`~medfm.ssl.masking.block_mask` (boxes of at least 4 and
    at most ``N / 2`` patches, as DINOv2), all drawn from ``random.Random`` seeded by the
    sample's seed mixed with the crop (:func:`~medfm.ssl.views.mix_seeds`).
    """
    n = 1
    for g in grid:
        n *= int(g)
    rows = []
    for seed in mix_seeds(sample_seeds, _MASK_STREAM + crop).tolist():
        rng = random.Random(seed)
        masked = rng.random() < mask_prob
        n_masked = int(n * rng.uniform(*mask_ratio)) if masked else 0
        rows.append(block_mask(grid, n_masked, rng, max_patches=max(1, n // 2)))
    return torch.stack(rows)


class DINOv2Network(nn.Module):
    """Encoder + DINO head (+ a separate iBOT patch head): crops ``(B, C, [D,] H, W)`` at any
    multiple of the patch size, optional masks ``(B, N)`` -> (pooled features ``(B, D)``, patch
    tokens ``(B, N, D)``); the heads are applied by :class:`DINOv2`."""

    def __init__(
        self,
        encoder: Encoder,
        head: DINOHead,
        patch_head: DINOHead | None = None,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        self.encoder, self.head, self.pooling = encoder, head, pooling
        self.ibot_head = patch_head

    @property
    def patch_head(self) -> DINOHead:
        """The iBOT head: its own, or the DINO head when shared."""
        return self.ibot_head if self.ibot_head is not None else self.head

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops -> (pooled ``(B, D)``, patch tokens ``(B, N, D)``) (DINOv2, Oquab et al. 2023)."""
        tokens = tokens_any_size(self.encoder, images, masks, mask_token)
        return _pool(self.encoder, tokens, self.pooling), tokens[
            :, self.encoder.num_prefix_tokens :
        ]


class DINOv2(nn.Module):
    """DINOv2 objective. ``forward({"image": (B, C, H, W) or (B, C, D, H, W)})`` -> ``{"loss",
    "loss_dino", "loss_ibot", "loss_koleo", "teacher_entropy", "mask_fraction",
    "ema_momentum"}``; call :meth:`on_step_end` after each optimiser step. See the module
    docstring.

    Args:
        encoder, out_dim, n_local, teacher_temp, student_temp, center_momentum, momentum, views,
            momentum_final, momentum_steps, hidden_dim, bottleneck_dim, pooling: as
            :class:`~medfm.ssl.dino.DINO` (``center_momentum`` for both centres).
        ibot_weight, koleo_weight: weights of the iBOT and KoLeo terms (>= 0).
        mask_prob: probability that a global crop is masked for iBOT.
        mask_ratio: ``(low, high)`` range of the masked fraction of a masked crop, ``0 <= low
            <= high < 1``.
        separate_head: give iBOT its own head (same sizes) instead of sharing the DINO head.
        centering: ``"centering"`` (EMA centres) or ``"sinkhorn_knopp"``.
        sinkhorn_iterations: Sinkhorn-Knopp iterations.
        gather_distributed: under ``torch.distributed``, KoLeo's neighbours come from every
            rank (:func:`koleo_loss`).
    """

    def __init__(
        self,
        encoder: Encoder,
        out_dim: int = 1024,
        n_local: int = 4,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        views=None,
        momentum_final: float = 1.0,
        momentum_steps: int | None = None,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        pooling: str = "mean",
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        mask_prob: float = 0.5,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        separate_head: bool = False,
        centering: str = "centering",
        sinkhorn_iterations: int = 3,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering={centering!r}: use one of {', '.join(CENTERINGS)}")
        low, high = (float(r) for r in mask_ratio)
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(
                f"mask_ratio={list(mask_ratio)} must be [low, high], 0 <= low <= high < 1"
            )
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        if ibot_weight < 0 or koleo_weight < 0:
            raise ValueError(f"weights must be >= 0, got {ibot_weight}, {koleo_weight}")
        size = tuple(encoder.patch_embed.img_size)
        self.views = views or MultiCrop(size, tuple(s // 2 for s in size), n_local)
        dim = encoder.embed_dim
        head = DINOHead(dim, out_dim, hidden_dim, bottleneck_dim)
        patch_head = DINOHead(dim, out_dim, hidden_dim, bottleneck_dim) if separate_head else None
        self.student = DINOv2Network(encoder, head, patch_head, pooling)
        self.teacher = EMATeacher(self.student)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # as DINOv2: zeros
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("ibot_center", torch.zeros(1, out_dim))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.center_momentum = center_momentum
        self.momentum, self.momentum_final = momentum, momentum_final
        self.momentum_steps = momentum_steps
        self.ibot_weight, self.koleo_weight = float(ibot_weight), float(koleo_weight)
        self.mask_prob, self.mask_ratio = float(mask_prob), (low, high)
        self.centering, self.sinkhorn_iterations = centering, int(sinkhorn_iterations)
        self.gather_distributed = gather_distributed

    @property
    def encoder(self) -> Encoder:
        """The student backbone, the encoder that is saved."""
        return self.student.encoder

    def current_momentum(self) -> float:
        """The teacher's EMA momentum at the current step (cosine schedule)."""
        return cosine_momentum(
            int(self.ema_steps), self.momentum_steps, self.momentum, self.momentum_final
        )

    def masks(self, global_crops: torch.Tensor, sample_seeds: torch.Tensor) -> torch.Tensor:
        """The iBOT masks ``(2B, N)`` of the global crops ``(2B, C, [D,] H, W)`` (crop 0 of
        every sample, then crop 1), from the ``(B,)`` sample seeds (:func:`ibot_masks`)."""
        patch = self.encoder.patch_embed.patch_size[0]
        grid = tuple(s // patch for s in global_crops.shape[2:])
        rows = [
            ibot_masks(grid, sample_seeds, crop, self.mask_prob, self.mask_ratio) for crop in (0, 1)
        ]
        return torch.cat(rows).to(global_crops.device)

    def _teacher_probs(self, logits: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        if self.centering == "sinkhorn_knopp":  # over ranks only in training, as KoLeo
            distributed = self.gather_distributed and self.training
            return sinkhorn_knopp(
                logits, self.teacher_temp, self.sinkhorn_iterations, distributed=distributed
            )
        return F.softmax((logits - center) / self.teacher_temp, dim=-1)

    def _dino_loss(
        self, student_out: list[torch.Tensor], teacher_probs: list[torch.Tensor]
    ) -> torch.Tensor:
        """Cross-entropy over every (teacher crop ``i``, student crop ``v != i``) pair, as
        :func:`~medfm.ssl.losses.dino_loss` but on the teacher's targets."""
        log_p = [F.log_softmax(s / self.student_temp, dim=-1) for s in student_out]
        pairs = [(i, v) for i in range(len(teacher_probs)) for v in range(len(log_p)) if v != i]
        total = sum((-teacher_probs[i] * log_p[v]).sum(dim=-1).mean() for i, v in pairs)
        return total / len(pairs)

    @torch.no_grad()
    def _update_centers(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor) -> None:
        """EMA of the global batch means (sums and counts all-reduced under DDP)."""
        m = self.center_momentum
        for center, logits in ((self.center, teacher_cls), (self.ibot_center, teacher_patch)):
            total = _sum_over_ranks(logits.sum(dim=0, keepdim=True).to(center))
            count = _sum_over_ranks(torch.tensor(float(len(logits)), device=center.device))
            if count > 0:
                center.mul_(m).add_(total / count, alpha=1 - m)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, [D,] H, W)}`` -> 0-dim ``{"loss", "loss_dino", "loss_ibot",
        "loss_koleo", ...}`` (DINOv2, Oquab et al. 2023)."""
        images = batch["image"]
        seeds = resolve_seeds(batch.get("sample_seed"), images.shape[0])
        crops = call_views(self.views, images, seeds)
        global_crops = torch.cat(crops[:2])  # (2B, C, [D,] H, W)
        masks = self.masks(global_crops, seeds)  # (2B, N)
        with torch.no_grad():
            t_pooled, t_patches = self.teacher(global_crops)
            teacher = self.teacher.module
            t_cls = teacher.head(t_pooled)  # (2B, K)
            t_patch = teacher.patch_head(t_patches[masks])  # (M, K)
            q_cls = self._teacher_probs(t_cls, self.center)
            q_patch = self._teacher_probs(t_patch, self.ibot_center)
        s_pooled, s_patches = self.student(global_crops, masks, self.mask_token)
        student_out = list(self.student.head(s_pooled).chunk(2))
        if len(crops) > 2:
            local_pooled, _ = self.student(torch.cat(crops[2:]))
            student_out += list(self.student.head(local_pooled).chunk(len(crops) - 2))
        loss_dino = self._dino_loss(student_out, list(q_cls.chunk(2)))
        s_patch = self.student.patch_head(s_patches[masks])  # (M, K)
        loss_ibot = ibot_loss(s_patch, q_patch, masks, self.student_temp)
        gathers = self.gather_distributed and self.training
        loss_koleo = sum(koleo_loss(f, gather_distributed=gathers) for f in s_pooled.chunk(2))
        loss = loss_dino + self.ibot_weight * loss_ibot + self.koleo_weight * loss_koleo
        entropy = -(q_cls * q_cls.clamp_min(1e-12).log()).sum(dim=-1).mean()
        if self.training and self.centering == "centering":
            self._update_centers(t_cls, t_patch)
        return {
            "loss": loss,
            "loss_dino": loss_dino.detach(),
            "loss_ibot": loss_ibot.detach(),
            "loss_koleo": loss_koleo.detach(),
            "teacher_entropy": entropy.detach(),
            "mask_fraction": masks.float().mean(),
            "ema_momentum": torch.tensor(self.current_momentum()),
        }

    @torch.no_grad()
    def on_step_end(self) -> None:
        """Move the teacher towards the student; call after ``optimizer.step()``."""
        self.teacher.update(self.student, self.current_momentum())
        self.ema_steps += 1
