"""Images <-> patch sequences, for any channel count and for 2D images or 3D volumes.

Generalises MAE's 3-channel square-2D ``patchify``: patches are in row-major grid order (the order
of the patch embedding's tokens) and the pixels of a patch in ``(p, p, C)`` order in 2D,
``(p, p, p, C)`` in 3D. :func:`patchify` / :func:`unpatchify` dispatch on the dimensionality.
"""

from __future__ import annotations

import torch


def patchify2d(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/p)*(W/p), p*p*C)``, patches row-major, pixels (p, p, C)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(
        b, (h // patch) * (w // patch), patch * patch * c
    )


def unpatchify2d(
    patches: torch.Tensor, patch: int, channels: int, grid: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`patchify2d`: ``(B, gh*gw, p*p*C)`` -> ``(B, C, gh*p, gw*p)``."""
    b = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(b, gh, gw, patch, patch, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, gh * patch, gw * patch)


def patchify3d(volumes: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B, (D/p)*(H/p)*(W/p), p*p*p*C)``, pixels (p, p, p, C)."""
    b, c, d, h, w = volumes.shape
    if d % patch or h % patch or w % patch:
        raise ValueError(f"volume size {d}x{h}x{w} is not divisible by patch size {patch}")
    gd, gh, gw = d // patch, h // patch, w // patch
    x = volumes.reshape(b, c, gd, patch, gh, patch, gw, patch)
    return torch.einsum("bcdohpwq->bdhwopqc", x).reshape(b, gd * gh * gw, patch**3 * c)


def unpatchify3d(
    patches: torch.Tensor, patch: int, channels: int, grid: tuple[int, int, int]
) -> torch.Tensor:
    """Inverse of :func:`patchify3d`: ``(B, gd*gh*gw, p^3*C)`` -> ``(B, C, gd*p, gh*p, gw*p)``."""
    b = patches.shape[0]
    gd, gh, gw = grid
    x = patches.reshape(b, gd, gh, gw, patch, patch, patch, channels)
    return torch.einsum("bdhwopqc->bcdohpwq", x).reshape(
        b, channels, gd * patch, gh * patch, gw * patch
    )


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """:func:`patchify2d` for ``(B, C, H, W)``, :func:`patchify3d` for ``(B, C, D, H, W)``."""
    if images.ndim == 4:
        return patchify2d(images, patch)
    if images.ndim == 5:
        return patchify3d(images, patch)
    raise ValueError(f"expected (B, C, H, W) or (B, C, D, H, W), got {tuple(images.shape)}")


def unpatchify(
    patches: torch.Tensor, patch: int, channels: int, grid: tuple[int, ...]
) -> torch.Tensor:
    """Inverse of :func:`patchify`; ``grid`` is ``(gh, gw)`` or ``(gd, gh, gw)``."""
    if len(grid) == 2:
        return unpatchify2d(patches, patch, channels, tuple(grid))
    if len(grid) == 3:
        return unpatchify3d(patches, patch, channels, tuple(grid))
    raise ValueError(f"grid must have 2 or 3 sizes, got {tuple(grid)}")
