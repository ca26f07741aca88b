"""Patch masking for masked image modelling: random (He et al. 2022, "Masked Autoencoders Are
Scalable Vision Learners") and block-wise (Bao et al. 2022, "BEiT: BERT Pre-Training of Image
Transformers"; used by iBOT, DINOv2 and CAE), in 2D and 3D patch grids."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept visible: ``round(N * (1 - ratio))``, at least 1."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def per_sample_uniform(seeds: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """``(B, n)`` uniform noise, row ``i`` drawn from its own generator seeded by ``seeds[i]``.

    A sample's randomness then depends on the sample alone, not on which process or micro-batch
    it lands in: the same global batch gives the same masks on 1 process or N.
    """
    rows = [torch.rand(n, generator=torch.Generator().manual_seed(int(s))) for s in seeds.tolist()]
    return torch.stack(rows).to(device)


def random_masking(
    tokens: torch.Tensor,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    sample_seeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens per sample.

    Args:
        tokens: ``(B, N, D)``.
        sample_seeds: optional ``(B,)`` integer seeds, one per sample (see
            :func:`per_sample_uniform`); otherwise noise comes from ``generator`` or the global RNG.
    Returns:
        visible ``(B, K, D)``; mask ``(B, N)`` with 1 = masked (removed), 0 = kept, in the original
        order; ids_restore ``(B, N)`` that un-shuffles ``[visible, mask tokens]`` back to order.
    """
    batch, n, dim = tokens.shape
    keep = num_visible(n, mask_ratio)
    if sample_seeds is not None:
        noise = per_sample_uniform(sample_seeds, n, tokens.device)
    else:
        noise = torch.rand(batch, n, device=tokens.device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, n, device=tokens.device)
    mask[:, :keep] = 0
    return visible, mask.gather(1, ids_restore), ids_restore


def _add_block(
    mask: np.ndarray,
    max_new: int,
    rng: random.Random,
    min_patches: int,
    log_aspect: tuple[float, float],
) -> int:
    """BEiT's ``_mask``: up to 10 tries to mask one box of a random volume in
    ``[min_patches, max_new]`` and random aspect ratios; the patches it newly masks (0 if none)."""
    dims, grid = mask.ndim, mask.shape
    for _ in range(10):
        target = rng.uniform(min_patches, max_new)
        # log side lengths: log(target) / dims, offset by centred log aspect ratios (in 2D
        # h = sqrt(target * r), w = sqrt(target / r) with log r uniform, as BEiT)
        offsets = [rng.uniform(*log_aspect) for _ in range(dims - 1)] + [0.0]
        mean = sum(offsets) / dims
        sides = [max(1, int(round(math.exp(math.log(target) / dims + o - mean)))) for o in offsets]
        if all(side <= n for side, n in zip(sides, grid, strict=True)):
            box = tuple(
                slice(start, start + side)
                for side, n in zip(sides, grid, strict=True)
                for start in (rng.randint(0, n - side),)
            )
            new = int(math.prod(sides) - mask[box].sum())
            if 0 < new <= max_new:
                mask[box] = True
                return new
    return 0


def block_mask(
    grid: Sequence[int],
    n_masked: int,
    rng: random.Random,
    min_patches: int = 4,
    max_patches: int | None = None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    exact: bool = False,
) -> torch.Tensor:
    """One block-wise mask of a 2D or 3D patch grid (BEiT's ``MaskingGenerator``, Bao et al. 2022).

    Boxes of ``min_patches`` to ``max_patches`` patches (default ``n_masked``) with log-uniform
    aspect ratios in ``aspect`` are added at random places until ``n_masked`` patches are masked
    or a box can no longer be placed; it never masks more than ``n_masked``. In 3D the two free
    aspect ratios are drawn independently. With ``exact`` a shortfall is made up by random single
    patches, so every mask has exactly ``n_masked`` (CAE's generator does the same). Unlike BEiT a
    box may span the whole grid side (tiny grids would otherwise take no box at all).

    Args:
        grid: the patch grid, ``(h, w)`` or ``(d, h, w)``.
        n_masked: patches to mask, ``0 <= n_masked <= prod(grid)``.
        rng: the only source of randomness (e.g. ``random.Random(sample_seed)``).
    Returns:
        ``(prod(grid),)`` bool, True = masked, patches in row-major grid order.

    Example:
        >>> m = block_mask((4, 4), 6, random.Random(0), exact=True)
        >>> m.shape, int(m.sum())
        (torch.Size([16]), 6)
    """
    total = math.prod(grid)
    if not 0 <= n_masked <= total:
        raise ValueError(f"n_masked must be in [0, {total}], got {n_masked}")
    mask = np.zeros(tuple(int(n) for n in grid), dtype=bool)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count, largest = 0, int(max_patches or n_masked)
    while count < n_masked:
        new = _add_block(mask, min(n_masked - count, largest), rng, min_patches, log_aspect)
        if new == 0:
            break
        count += new
    flat = mask.reshape(-1)
    if exact and count < n_masked:
        free = np.flatnonzero(~flat).tolist()
        flat[rng.sample(free, n_masked - count)] = True
    return torch.from_numpy(flat.copy())


def block_masking(
    grid: Sequence[int],
    n_masked: int,
    sample_seeds: torch.Tensor,
    exact: bool = True,
    device: torch.device | str | None = None,
    **kwargs,
) -> torch.Tensor:
    """:func:`block_mask` for each sample, row ``i`` from ``random.Random(sample_seeds[i])``:
    ``(B,)`` integer seeds -> ``(B, prod(grid))`` bool (True = masked), on ``device``.

    As :func:`per_sample_uniform`, a sample's mask depends on its seed alone, so 1 or N processes
    (and a resumed run) mask it alike. ``kwargs`` go to :func:`block_mask`.
    """
    rows = [
        block_mask(grid, n_masked, random.Random(int(s)), exact=exact, **kwargs)
        for s in torch.as_tensor(sample_seeds).tolist()
    ]
    return torch.stack(rows).to(device)
