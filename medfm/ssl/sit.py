"""SiT: group-masked model learning, rotation prediction and contrastive learning on one ViT
(Atito, Awais and Kittler 2021, "SiT: Self-supervised vIsion Transformer", arXiv:2104.03602).

Every sample gets two random views (:class:`~medfm.ssl.views.TwoViews`), each rotated by
``k * 90`` degrees in the H-W plane (``k`` in 0..3, per sample and view; for volumes the slices
turn, the depth axis stays) and then corrupted by group-masked model learning (GMML,
:func:`gmml_groups`): random groups of neighbouring patches (connected blocks of the patch grid,
rectangles in 2D and cuboids in 3D) are corrupted until a fraction ``corrupt_ratio`` of the
patches is, each group replaced by uniform noise, by the same region of another image of the
(global) batch, or by zeros, chosen per group with ``corrupt_probs``. The ViT sees *all* tokens
of the corrupted views plus a learned rotation token, and three terms are trained:

- **reconstruction**: a linear head per patch token (the official code's transposed
  convolution with kernel = stride = patch is the same map) predicts the pixels of the whole
  clean (rotated) view; the loss is L1 on every pixel, corrupted ones weighted
  ``corrupted_weight`` and the others 1, ``sum(w |pred - x|) / sum(w)``;
- **rotation**: a linear head on the rotation token's output classifies ``k`` (cross-entropy);
- **contrastive**: SimCLR's NT-Xent (:func:`~medfm.ssl.losses.info_nce`) on the projected pooled
  features (``pooling``) of the two corrupted views, negatives gathered over ranks under DDP.

Weighting follows the official code (``losses.py`` of github.com/Sara-Ahmed/SiT, the SiT v1
release): the uncertainty weighting of Kendall, Gal and Cipolla 2018 ("Multi-Task Learning Using
Uncertainty to Weigh Losses"), ``loss = sum_t c_t exp(-s_t) L_t + 0.5 s_t`` with one learned
``s_t`` per task initialised to 1 and ``c = (1, 1, 0.5)`` for (rotation cross-entropy,
contrastive, L1); the loss can then go below 0. ``weighting="fixed"`` uses
``weights[0] L_rot + weights[1] L_con + weights[2] L_rec`` instead (equal weights by default).

Differences from the paper and its code, on purpose:

- groups are blocks of whole patches, and the last group is trimmed (in raster order inside its
  block) so that exactly ``round(corrupt_ratio * N)`` of the ``N`` patches are corrupted in every
  view; the v1 code corrupts pixel rectangles of up to 25% of the image side until a random
  fraction (up to 30%) of pixels, and adds grey-scale and blur patches. Here the ratio is fixed
  and the largest group side is ``max_group`` of the patch grid's side;
- noise is ``U(0, 1)``, the range of medfm's images (the code draws ``N(0, 1)`` on normalised
  images); the donor of an "other image" group is any other sample of the *global* batch (the
  views are all-gathered under DDP), so 1 and N processes corrupt alike; with one image in the
  batch such groups get noise;
- the contrastive term uses the encoder's pooled features (``model.pooling``, the features that
  are evaluated) through SimCLR's MLP projector, instead of a second learned token with a linear
  head; the rotation term keeps the paper's extra token (not kept in the saved encoder);
- the L1 weight of corrupted pixels is a setting (1 = the official code's plain ``L1Loss`` on
  all pixels).

``medfm.ssl.hybrid.Hybrid`` stays the simpler MAE + InfoNCE sum; this is the SiT recipe itself.
Randomness (views, rotations, groups, their kinds, donors and noise) is keyed by each sample's
seed (:mod:`medfm.ssl.views`), so a resumed run or N processes replay it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medfm.models.vit3d import ViT3D
from medfm.ssl import gather as G
from medfm.ssl.heads import ProjectionHead
from medfm.ssl.losses import info_nce
from medfm.ssl.patches import patchify
from medfm.ssl.simclr import default_views
from medfm.ssl.views import call_views, mix_seeds, resolve_seeds, view_seeds

# streams of a view's seed (the view augmentations use 1..6)
_ROTATION, _GROUPS, _NOISE = 101, 102, 103
KEEP, NOISE, OTHER, ZERO = -1, 0, 1, 2  # what a patch becomes
# the official code's factors of the uncertainty-weighted terms (rotation, contrastive, L1)
UNCERTAINTY_FACTORS = (1.0, 1.0, 0.5)


def rotation_labels(seeds: torch.Tensor) -> torch.Tensor:
    """``(B,)`` seeds -> ``(B,)`` int64 quarter turns in 0..3, each from its own seed."""
    gen = [torch.Generator().manual_seed(int(s)) for s in mix_seeds(seeds, _ROTATION).tolist()]
    return torch.stack([torch.randint(0, 4, (), generator=g) for g in gen]).long()


def rotate_hw(images: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Sample ``i`` of ``(B, C, [D,] H, W)`` rotated by ``quarter_turns[i] * 90`` degrees in the
    H-W plane (``torch.rot90`` over the last two axes; H must equal W)."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotations need H == W, got {tuple(images.shape[-2:])}")
    turns = quarter_turns.tolist()
    return torch.stack(
        [torch.rot90(x, int(k), dims=(-2, -1)) for x, k in zip(images, turns, strict=True)]
    )


def gmml_groups(
    grid: Sequence[int],
    ratio: float,
    max_group: float,
    probs: Sequence[float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One view's GMML corruption plan on a patch grid (2D ``(h, w)`` or 3D ``(d, h, w)``).

    Blocks of patches (each side uniform in ``1..max(1, round(max_group * grid side))``, placed
    uniformly inside the grid) are added until ``round(ratio * N)`` patches are corrupted; a
    block's patches that an earlier block took stay in the earlier group, and the last block is
    cut to the patches still needed, in raster order. Each group is ``NOISE``, ``OTHER`` or
    ``ZERO`` with probabilities ``probs``.

    Returns:
        ``kind`` ``(N,)`` int64 per patch in raster order (``KEEP`` = -1 or the group's kind) and
        ``draw`` ``(N,)`` float64: one ``U(0, 1)`` per group (the same on all its patches), which
        picks the donor of ``OTHER`` groups.
    """
    grid = tuple(int(g) for g in grid)
    n = math.prod(grid)
    target = int(round(ratio * n))
    kind = np.full(grid, KEEP, dtype=np.int64)
    draw = np.zeros(grid)
    sides = [max(1, int(round(max_group * g))) for g in grid]
    taken = 0
    while taken < target:
        size = [int(rng.integers(1, s + 1)) for s in sides]
        start = [int(rng.integers(0, g - s + 1)) for g, s in zip(grid, size, strict=True)]
        what, u = int(rng.choice(3, p=np.asarray(probs, dtype=float))), float(rng.random())
        block = tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))
        free = np.zeros(grid, dtype=bool)
        free[block] = kind[block] == KEEP
        new = np.flatnonzero(free)[: target - taken]  # raster order
        kind.flat[new], draw.flat[new] = what, u
        taken += len(new)
    return kind.reshape(-1), draw.reshape(-1)


def _upsample(per_patch: torch.Tensor, grid: Sequence[int], patch: int) -> torch.Tensor:
    """``(B, N)`` in raster order -> ``(B, *spatial)``, each patch's value on its pixels."""
    x = per_patch.reshape(per_patch.shape[0], *grid)
    for axis in range(1, x.ndim):
        x = x.repeat_interleave(patch, dim=axis)
    return x


def gmml_corrupt(
    images: torch.Tensor,
    seeds: torch.Tensor,
    patch: int,
    ratio: float,
    max_group: float,
    probs: Sequence[float],
    pool: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt ``images`` ``(b, C, *spatial)`` by :func:`gmml_groups`, sample ``i`` from
    ``seeds[i]``.

    ``pool`` ``(B, C, *spatial)`` is the global batch the donors come from (default
    ``images``), ``images[i]`` being its sample ``offset + i``; an ``OTHER`` group of sample
    ``g`` takes its region from sample ``(g + 1 + floor(u * (B - 1))) % B`` of the pool, never
    itself (noise when ``B == 1``).

    Returns:
        the corrupted images and the corruption mask ``(b, 1, *spatial)`` (1 = corrupted).
    """
    pool = images if pool is None else pool
    b, spatial = images.shape[0], images.shape[2:]
    grid = [s // patch for s in spatial]
    total = pool.shape[0]
    plans = [
        gmml_groups(grid, ratio, max_group, probs, np.random.default_rng(int(s)))
        for s in mix_seeds(seeds, _GROUPS).tolist()
    ]
    kind = torch.from_numpy(np.stack([k for k, _ in plans]))  # (b, N)
    if total == 1:
        kind = kind.masked_fill(kind == OTHER, NOISE)
    me = torch.arange(offset, offset + b)[:, None]
    draw = torch.from_numpy(np.stack([d for _, d in plans]))
    donor = (me + 1 + (draw * (total - 1)).floor().long()) % total  # (b, N), never me
    kind, donor = _upsample(kind, grid, patch), _upsample(donor, grid, patch)  # (b, *spatial)
    noise = torch.zeros(images.shape)
    noise_seeds = mix_seeds(seeds, _NOISE).tolist()
    for i in (kind == NOISE).flatten(1).any(dim=1).nonzero().flatten().tolist():
        gen = torch.Generator().manual_seed(noise_seeds[i])
        noise[i] = torch.rand(images.shape[1:], generator=gen)
    # donor pixels: out[i, c, s] = pool[donor[i, s], c, s]
    flat_pool = pool.flatten(2).permute(2, 0, 1)  # (S, B, C)
    where = torch.arange(flat_pool.shape[0], device=pool.device)[None, :]
    donated = flat_pool[where, donor.flatten(1).to(pool.device)]  # (b, S, C)
    donated = donated.permute(0, 2, 1).reshape(images.shape)
    kind = kind.unsqueeze(1).to(images.device)  # (b, 1, *spatial)
    out = torch.where(kind == NOISE, noise.to(images), images)
    out = torch.where(kind == OTHER, donated, out)
    out = torch.where(kind == ZERO, torch.zeros_like(images), out)
    return out, (kind != KEEP).to(images.dtype)


def weighted_l1(
    pred: torch.Tensor, target: torch.Tensor, corrupted: torch.Tensor, corrupted_weight: float
) -> torch.Tensor:
    """``sum(w * |pred - target|) / sum(w)`` with ``w = corrupted_weight`` where ``corrupted``
    (broadcast against ``pred``) is 1 and 1 elsewhere; plain L1 at ``corrupted_weight=1``."""
    weight = (1 + (corrupted_weight - 1) * corrupted).expand_as(pred)
    return (weight * (pred - target).abs()).sum() / weight.sum()


class SiT(nn.Module):
    """``forward({"image": (B, C, [D,] H, W)})`` -> ``{"loss", "loss_rotation",
    "loss_contrastive", "loss_reconstruction", "rotation_accuracy", "corrupt_fraction"}`` (and,
    with uncertainty weighting, the effective weights ``weight_rotation``, ...); all but
    ``loss`` detached 0-dim.

    Args:
        encoder: the timm ViT or medfm ViT3D to train (unified: 2D and 3D batches).
        views: ``images -> (view1, view2)`` at the encoder's size; default
            :func:`~medfm.ssl.simclr.default_views`. Views must be square in H-W (rotations).
        proj_dim, hidden_dim, temperature, pooling: the contrastive term, as
            :class:`~medfm.ssl.simclr.SimCLR`.
        corrupt_ratio: fraction of patches corrupted per view, in ``[0, 1)``.
        max_group: largest group side as a fraction of the patch grid's side, in ``(0, 1]``.
        corrupt_probs: probabilities of noise, another image's region and zeros per group.
        weighting: ``"uncertainty"`` (learned, as the official code) or ``"fixed"``.
        weights: fixed weights of (rotation, contrastive, reconstruction).
        corrupted_weight: L1 weight of corrupted pixels (others 1).
        gather_distributed: gather negatives and donor images over ranks in training mode.
    """

    def __init__(
        self,
        encoder: VisionTransformer | ViT3D,
        views=None,
        proj_dim: int = 128,
        hidden_dim: int = 512,
        temperature: float = 0.2,
        pooling: str = "mean",
        corrupt_ratio: float = 0.5,
        max_group: float = 0.5,
        corrupt_probs: Sequence[float] = (0.4, 0.4, 0.2),
        weighting: str = "uncertainty",
        weights: Sequence[float] = (1.0, 1.0, 1.0),
        corrupted_weight: float = 1.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        probs = [float(p) for p in corrupt_probs]
        if len(probs) != 3 or min(probs) < 0 or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"corrupt_probs={probs} must be 3 probabilities summing to 1")
        if not 0.0 <= corrupt_ratio < 1.0:
            raise ValueError(f"corrupt_ratio={corrupt_ratio} must be in [0, 1)")
        if not 0.0 < max_group <= 1.0:
            raise ValueError(f"max_group={max_group} must be in (0, 1]")
        if weighting not in ("uncertainty", "fixed"):
            raise ValueError(f"weighting={weighting!r}: use 'uncertainty' or 'fixed'")
        if len(weights) != 3 or min(weights) < 0:
            raise ValueError(f"weights={list(weights)} must be 3 values >= 0")
        if corrupted_weight < 0:
            raise ValueError(f"corrupted_weight={corrupted_weight} must be >= 0")
        if pooling not in ("mean", "cls") or (pooling == "cls" and not encoder.num_prefix_tokens):
            raise ValueError(f"pooling={pooling!r}: use 'mean', or 'cls' with a class token")
        self.encoder = encoder
        self.views = views or default_views(encoder)
        dim = encoder.embed_dim
        self.rotation_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.rotation_token, std=0.02)
        self.rotation_head = nn.Linear(dim, 4)
        self.projector = ProjectionHead(dim, hidden_dim, proj_dim)
        self.patch = encoder.patch_embed.patch_size[0]
        channels = encoder.patch_embed.proj.in_channels
        self.spatial_dims = len(encoder.patch_embed.grid_size)
        dims = [self.spatial_dims] + ([2] if getattr(encoder, "unified", False) else [])
        for d in dims:
            setattr(
                self, f"decoder_pred{self._suffix(d)}", nn.Linear(dim, self.patch**d * channels)
            )
        if weighting == "uncertainty":
            self.log_vars = nn.Parameter(torch.ones(3))  # s_t of the official code, init 1
        self.weighting, self.weights = weighting, tuple(float(w) for w in weights)
        self.temperature, self.pooling = float(temperature), pooling
        self.corrupt_ratio, self.max_group = float(corrupt_ratio), float(max_group)
        self.corrupt_probs, self.corrupted_weight = tuple(probs), float(corrupted_weight)
        self.gather_distributed = gather_distributed

    def _suffix(self, spatial_dims: int) -> str:
        return "" if spatial_dims == self.spatial_dims else f"_{spatial_dims}d"

    @property
    def gathers(self) -> bool:
        """Whether this forward gathers over ranks (training mode under ``torch.distributed``)."""
        return self.gather_distributed and self.training and G.world_size() > 1

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, [D,] H, W)`` -> ``(B, prefix + 1 + N, D)``: the encoder's blocks over its
        class token (if any), the rotation token and every patch token."""
        enc, dims = self.encoder, images.ndim - 2
        if hasattr(enc, "embed_patches"):  # ViT3D: 2D or 3D input
            x, table = enc.embed_patches(images)[0], enc.pos_embed_for(dims)
        else:
            table = enc.pos_embed
            x = enc.patch_embed(images) + table[:, enc.num_prefix_tokens :]
        parts = [self.rotation_token.expand(x.shape[0], -1, -1), x]
        if enc.num_prefix_tokens:
            parts.insert(0, (enc.cls_token + table[:, :1]).expand(x.shape[0], -1, -1))
        return enc.norm(enc.blocks(enc.norm_pre(torch.cat(parts, dim=1))))

    def _corrupted_views(self, images: torch.Tensor, seeds: torch.Tensor) -> tuple:
        """Two rotated views, their corrupted copies, corruption masks and rotation labels."""
        b = images.shape[0]
        clean, corrupted, masks, labels = [], [], [], []
        for v, view in enumerate(call_views(self.views, images, seeds)):
            seeds_v = view_seeds(seeds, v)
            turns = rotation_labels(seeds_v)
            view = rotate_hw(view, turns)
            pool = G.gather_no_grad(view) if self.gathers else view
            offset = G.rank() * b if self.gathers else 0
            x, mask = gmml_corrupt(
                view,
                seeds_v,
                self.patch,
                self.corrupt_ratio,
                self.max_group,
                self.corrupt_probs,
                pool,
                offset,
            )
            clean.append(view)
            corrupted.append(x)
            masks.append(mask)
            labels.append(turns.to(images.device))
        return clean, corrupted, masks, labels

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, [D,] H, W)}`` -> 0-dim ``{"loss", "loss_rotation", ...}`` (SiT,
        Atito et al. 2021)."""
        images = batch["image"]
        seeds = resolve_seeds(batch.get("sample_seed"), images.shape[0])
        clean, corrupted, masks, labels = self._corrupted_views(images, seeds)
        out = self.tokens(torch.cat(corrupted))  # (2B, prefix + 1 + N, D)
        prefix = self.encoder.num_prefix_tokens
        logits = self.rotation_head(out[:, prefix])
        turns = torch.cat(labels)
        loss_rotation = F.cross_entropy(logits, turns)
        patches = out[:, prefix + 1 :]
        pooled = out[:, 0] if self.pooling == "cls" else patches.mean(dim=1)
        z1, z2 = self.projector(pooled).chunk(2)
        loss_contrastive = info_nce(z1, z2, self.temperature, gather_distributed=self.gathers)
        dims = images.ndim - 2
        head = getattr(self, f"decoder_pred{self._suffix(dims)}", None)
        if head is None:
            raise ValueError(f"this SiT takes {self.spatial_dims}D input, got {dims}D")
        target, mask = torch.cat(clean), torch.cat(masks)
        loss_reconstruction = weighted_l1(
            head(patches),
            patchify(target, self.patch),
            patchify(mask.expand_as(target), self.patch),
            self.corrupted_weight,
        )
        terms = torch.stack([loss_rotation, loss_contrastive, loss_reconstruction])
        extra = {}
        if self.weighting == "uncertainty":
            factors = torch.tensor(UNCERTAINTY_FACTORS, device=terms.device, dtype=terms.dtype)
            scale = factors * torch.exp(-self.log_vars)
            loss = (scale * terms + 0.5 * self.log_vars).sum()
            names = ("weight_rotation", "weight_contrastive", "weight_reconstruction")
            extra = {k: w.detach() for k, w in zip(names, scale, strict=True)}
        else:
            loss = (torch.tensor(self.weights).to(terms) * terms).sum()
        accuracy = (logits.argmax(dim=1) == turns).float().mean()
        return {
            "loss": loss,
            "loss_rotation": loss_rotation.detach(),
            "loss_contrastive": loss_contrastive.detach(),
            "loss_reconstruction": loss_reconstruction.detach(),
            "rotation_accuracy": accuracy.detach(),
            "corrupt_fraction": mask.mean().detach(),
            **extra,
        }
