"""Images <-> patch sequences, for any channel count (generalises MAE's 3-channel ``patchify``)."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/p)*(W/p), p*p*C)``, patches row-major, pixels (p, p, C)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(
        b, (h // patch) * (w // patch), patch * patch * c
    )


def unpatchify(
    patches: torch.Tensor, patch: int, channels: int, grid: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(b, gh, gw, patch, patch, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, gh * patch, gw * patch)
