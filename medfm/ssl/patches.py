"""Images -> patch sequences (MAE's reconstruction targets), for any channel count and for 2D
images or 3D volumes.

Generalises MAE's 3-channel square-2D ``patchify``: patches are in row-major grid order (the order
of the patch embedding's tokens) and the pixels of a patch in ``(p, p, C)`` order in 2D,
``(p, p, p, C)`` in 3D. :func:`patchify` dispatches on the dimensionality.
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


def patchify3d(volumes: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B, (D/p)*(H/p)*(W/p), p*p*p*C)``, pixels (p, p, p, C)."""
    b, c, d, h, w = volumes.shape
    if d % patch or h % patch or w % patch:
        raise ValueError(f"volume size {d}x{h}x{w} is not divisible by patch size {patch}")
    gd, gh, gw = d // patch, h // patch, w // patch
    x = volumes.reshape(b, c, gd, patch, gh, patch, gw, patch)
    return torch.einsum("bcdohpwq->bdhwopqc", x).reshape(b, gd * gh * gw, patch**3 * c)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """:func:`patchify2d` for ``(B, C, H, W)``, :func:`patchify3d` for ``(B, C, D, H, W)``."""
    if images.ndim == 4:
        return patchify2d(images, patch)
    if images.ndim == 5:
        return patchify3d(images, patch)
    raise ValueError(f"expected (B, C, H, W) or (B, C, D, H, W), got {tuple(images.shape)}")
