"""Random patch masking for masked image modelling (He et al. 2022, "Masked Autoencoders Are
Scalable Vision Learners")."""

from __future__ import annotations

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
