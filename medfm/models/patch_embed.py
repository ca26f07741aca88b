"""One patch embedding for 2D images and 3D volumes.

Cai et al. 2022, "Uni4Eye: Unified 2D and 3D Self-supervised Pre-training via Masked Image Modeling
Transformer for Ophthalmic Image Classification": a 2D image ``(B, C, H, W)`` is cut into ``p x p``
patches by a ``Conv2d``, a volume ``(B, C, D, H, W)`` into ``p x p x p`` patches by a ``Conv3d``;
both give tokens of the same width, so one transformer after them is trained on 2D slices and 3D
volumes together.

How the two kernels relate: they are separate parameters, each initialised like MAE's patch
projection (Xavier-uniform on the kernel seen as a matrix). Optionally (``inflate=True`` or
:meth:`UnifiedPatchEmbed.inflate_2d_into_3d` after loading 2D weights) the 3D kernel is the 2D
kernel *inflated* along depth and divided by ``p`` (Carreira & Zisserman 2017, "Quo Vadis, Action
Recognition?"), with the same bias: then a volume whose ``p`` slices in each depth patch are equal
gives, for each depth patch, exactly the 2D tokens of that slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def _xavier_(conv: nn.Module) -> None:
    weight = conv.weight.data
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))


class UnifiedPatchEmbed(nn.Module):
    """Patch tokens for ``(B, C, H, W)`` (``Conv2d``) and ``(B, C, D, H, W)`` (``Conv3d``) inputs.

    Args:
        in_chans: input channels ``C``.
        embed_dim: token width, shared by both paths.
        patch_size: cubic patch edge ``p`` (``p x p`` in 2D).
        img_size: in-plane size ``H`` (or ``(H, W)``) of both 2D images and volumes.
        depth_size: number of slices ``D`` of a volume.
        with_2d: also build the ``Conv2d`` path (``False``: volumes only).
        inflate: initialise the 3D kernel by inflating the 2D one (see the module docstring).

    ``forward(x)`` returns ``(tokens (B, N, embed_dim), grid)`` with ``grid`` the patch grid,
    ``(D/p, H/p, W/p)`` for a volume and ``(H/p, W/p)`` for an image, tokens in row-major order.
    Like timm's ``PatchEmbed`` it has ``patch_size`` (``(p, p, p)``), ``grid_size``
    (the 3D grid), ``num_patches`` and ``proj`` (the ``Conv3d``); the 2D path is ``proj_2d`` with
    ``grid_size_2d`` and ``num_patches_2d``.

    Example:
        >>> embed = UnifiedPatchEmbed(1, 192, 4, img_size=16, depth_size=8)
        >>> embed(torch.rand(2, 1, 8, 16, 16))[0].shape, embed(torch.rand(2, 1, 16, 16))[1]
        (torch.Size([2, 32, 192]), (4, 4))
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int,
        img_size: int | Sequence[int],
        depth_size: int,
        with_2d: bool = True,
        inflate: bool = False,
    ) -> None:
        super().__init__()
        h, w = _pair(img_size)
        p = int(patch_size)
        if any(s % p for s in (depth_size, h, w)):
            raise ValueError(
                f"volume size {depth_size}x{h}x{w} is not divisible by patch size {p}; "
                "change model.patch_size, data.image_size or data.depth_size"
            )
        self.in_chans, self.embed_dim = int(in_chans), int(embed_dim)
        self.img_size = (int(depth_size), h, w)
        self.patch_size = (p, p, p)
        self.grid_size = (depth_size // p, h // p, w // p)
        self.grid_size_2d = (h // p, w // p)
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.num_patches_2d = self.grid_size_2d[0] * self.grid_size_2d[1]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=p, stride=p)
        self.proj_2d = nn.Conv2d(in_chans, embed_dim, kernel_size=p, stride=p) if with_2d else None
        for conv in (self.proj, self.proj_2d):
            if conv is not None:
                _xavier_(conv)
        if inflate:
            self.inflate_2d_into_3d()

    @torch.no_grad()
    def inflate_2d_into_3d(self) -> None:
        """Set the 3D kernel to the 2D kernel repeated ``p`` times along depth, divided by ``p``."""
        if self.proj_2d is None:
            raise ValueError("this patch embedding has no 2D kernel to inflate (with_2d=False)")
        p = self.patch_size[0]
        self.proj.weight.copy_(self.proj_2d.weight.unsqueeze(2).repeat(1, 1, p, 1, 1) / p)
        self.proj.bias.copy_(self.proj_2d.bias)

    def _check(self, x: torch.Tensor) -> nn.Module:
        if x.ndim == 5:
            expected, conv = self.img_size, self.proj
        elif x.ndim == 4:
            if self.proj_2d is None:
                raise ValueError(
                    f"got a 2D batch {tuple(x.shape)} but this encoder takes volumes "
                    "(B, C, D, H, W) only; build it with unified=True (model.name=unified_*)"
                )
            expected, conv = self.img_size[1:], self.proj_2d
        else:
            raise ValueError(f"expected (B, C, H, W) or (B, C, D, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[1:]) != (self.in_chans, *expected):
            raise ValueError(
                f"input {tuple(x.shape)} does not match (B, {self.in_chans}, "
                f"{', '.join(map(str, expected))}); set data.channels, data.image_size and "
                "data.depth_size to the data's size"
            )
        return conv

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``(B, C, H, W)`` or ``(B, C, D, H, W)`` -> tokens ``(B, N, embed_dim)`` and the patch
        grid (Uni4Eye, Cai et al. 2022)."""
        y = self._check(x)(x)  # (B, D, *grid)
        return y.flatten(2).transpose(1, 2), tuple(y.shape[2:])
