"""A convolutional stem in place of the ViT's patchify layer (2D timm ViTs).

Xiao et al. 2021, "Early Convolutions Help Transformers See Better": replacing the single
``p x p`` stride-``p`` patch projection by a few 3x3 convolutions (stride 2 until the patch size
is reached, then a 1x1 projection) makes ViTs train faster and more stably, which matters most
with little data and few steps, as when pre-training on a CPU. It keeps timm's ``PatchEmbed``
around it (flatten, norm, ``grid_size``), so MAE, SimCLR, DINO and the heads are unchanged; only
the keys under ``patch_embed.proj.`` differ from a plain timm ViT.
"""

from __future__ import annotations

import math

from torch import nn


class ConvStem(nn.Sequential):
    """``(B, C, H, W)`` -> ``(B, D, H / p, W / p)``: 3x3 conv-BN-GELU layers, ``log2(p)`` of them
    with stride 2 (widths doubling up to ``D``), then a 1x1 conv to ``D``."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        n_down = int(round(math.log2(patch_size)))
        if 2**n_down != patch_size:
            raise ValueError(f"model.stem=conv needs a power-of-two patch size, got {patch_size}")
        widths = [max(embed_dim // 2 ** (n_down - i), 16) for i in range(1, n_down + 1)]
        layers, width = [], in_channels
        for out in widths:
            layers += [
                nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.GELU(),
            ]
            width = out
        layers.append(nn.Conv2d(width, embed_dim, 1))
        super().__init__(*layers)
        self.in_channels = in_channels


def use_conv_stem(model: nn.Module) -> nn.Module:
    """Swap ``model.patch_embed.proj`` of a timm ViT for a :class:`ConvStem` of the same shape."""
    proj = model.patch_embed.proj
    model.patch_embed.proj = ConvStem(proj.in_channels, proj.out_channels, proj.kernel_size[0])
    return model
