"""Random patch masking for masked image modelling (He et al. 2022, "Masked Autoencoders Are
Scalable Vision Learners")."""

from __future__ import annotations

import torch


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept visible: ``round(N * (1 - ratio))``, at least 1."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens per sample.

    Args:
        tokens: ``(B, N, D)``.
    Returns:
        visible ``(B, K, D)``; mask ``(B, N)`` with 1 = masked (removed), 0 = kept, in the original
        order; ids_restore ``(B, N)`` that un-shuffles ``[visible, mask tokens]`` back to order.
    """
    batch, n, dim = tokens.shape
    keep = num_visible(n, mask_ratio)
    noise = torch.rand(batch, n, device=tokens.device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, n, device=tokens.device)
    mask[:, :keep] = 0
    return visible, mask.gather(1, ids_restore), ids_restore
