"""A 3D Vision Transformer (and a unified 2D + 3D one) built from timm ``Block``s.

Dosovitskiy et al. 2021 on cubic patches, with a fixed 3D sin-cos position embedding as in MAE
(He et al. 2022). ``unified=True`` adds a 2D path through the same transformer (Cai et al. 2022,
"Uni4Eye"; see :mod:`medfm.models.patch_embed`). The module mirrors timm's ``VisionTransformer``
(``patch_embed``, ``cls_token``, ``pos_embed``, ``norm_pre``, ``blocks``, ``norm``,
``num_prefix_tokens``, ``forward_features``), so :func:`medfm.models.backbones.encode` and
:class:`medfm.ssl.mae.MAE` work with it; attention is timm's (``scaled_dot_product_attention``).

The encoder weights load into MONAI's ``monai.networks.nets.ViT`` through
:func:`to_monai_state_dict`:

=====================================  ============================================================
medfm ``ViT3D``                        MONAI ``ViT`` (``proj_type="conv"``, ``qkv_bias=True``)
=====================================  ============================================================
``patch_embed.proj.{weight,bias}``     ``patch_embedding.patch_embeddings.{weight,bias}``
``pos_embed[:, prefix:]``              ``patch_embedding.position_embeddings``
``cls_token``                          ``cls_token`` (only with ``classification=True``)
``blocks.i.norm1.*``                   ``blocks.i.norm1.*``
``blocks.i.attn.qkv.{weight,bias}``    ``blocks.i.attn.qkv.{weight,bias}`` (same ``(3, heads, dh)``)
``blocks.i.attn.proj.*``               ``blocks.i.attn.out_proj.*``
``blocks.i.norm2.*``                   ``blocks.i.norm2.*``
``blocks.i.mlp.fc1.*``                 ``blocks.i.mlp.linear1.*``
``blocks.i.mlp.fc2.*``                 ``blocks.i.mlp.linear2.*``
``norm.*``                             ``norm.*``
(none)                                 ``blocks.i.norm_cross_attn.*``: unused, set to identity
``patch_embed.proj_2d.*``              (none: MONAI's ViT has one spatial dimensionality)
=====================================  ============================================================

MONAI's ViT with ``classification=False`` has no class token, so its tokens equal ours for a
``ViT3D(class_token=False)``; for the default ``class_token=True`` build MONAI's ViT with
``classification=True`` and load with ``strict=False`` (only ``classification_head.*`` stays
untrained): its last hidden state, normed, equals our ``forward_features``. MONAI adds no position
embedding to its class token; ours adds ``pos_embed[:, :1]``, which is zero. LayerNorm ``eps``
defaults to MONAI's ``1e-5`` here (timm's ViT uses ``1e-6``); GELU is the exact (erf) one in both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from medfm.models.patch_embed import UnifiedPatchEmbed
from medfm.models.pos_embed import sincos_2d, sincos_3d


def _triple(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        return size, size, size
    d, h, w = (int(s) for s in size)
    return d, h, w


def _with_prefix(table: torch.Tensor, prefix: int) -> torch.Tensor:
    """``(N, D)`` -> ``(1, prefix + N, D)`` with zero rows for the prefix tokens."""
    return torch.cat([torch.zeros(prefix, table.shape[1]), table]).unsqueeze(0)


class ViT3D(nn.Module):
    """ViT on ``(B, C, D, H, W)`` volumes (and ``(B, C, H, W)`` images when ``unified``).

    Args:
        img_size: volume size ``(D, H, W)`` (or one int for a cube); 2D images are ``(H, W)``.
        patch_size: cubic patch edge ``p``; every size must be divisible by it.
        in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: as in timm's ViT.
        norm_eps: LayerNorm epsilon (MONAI's ``1e-5`` by default).
        class_token: prepend a learnable class token (``num_prefix_tokens`` = 1).
        unified: also accept 2D images, through a ``Conv2d`` and the 2D sin-cos table.
        inflate_2d: initialise the 3D patch kernel by inflating the 2D one (needs ``unified``).
        drop_path_rate: stochastic depth, increasing linearly over the blocks.

    Example:
        >>> vit = ViT3D(16, 4, embed_dim=48, depth=1, num_heads=3)
        >>> vit.forward_features(torch.rand(2, 1, 16, 16, 16)).shape
        torch.Size([2, 65, 48])
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 96,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        class_token: bool = True,
        unified: bool = False,
        inflate_2d: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        d, h, w = _triple(img_size)
        self.img_size = (d, h, w)
        self.embed_dim = self.num_features = int(embed_dim)
        self.depth, self.num_heads, self.mlp_ratio = int(depth), int(num_heads), float(mlp_ratio)
        self.unified = bool(unified)
        self.num_prefix_tokens = 1 if class_token else 0
        self.no_embed_class = False
        self.global_pool = "token" if class_token else "avg"
        self.patch_embed = UnifiedPatchEmbed(
            in_chans, embed_dim, patch_size, (h, w), d, with_2d=unified, inflate=inflate_2d
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        table = sincos_3d(embed_dim, *self.patch_embed.grid_size)
        self.pos_embed = nn.Parameter(
            _with_prefix(table, self.num_prefix_tokens), requires_grad=False
        )
        if unified:
            table_2d = sincos_2d(embed_dim, *self.patch_embed.grid_size_2d)
            self.register_buffer(
                "pos_embed_2d", _with_prefix(table_2d, self.num_prefix_tokens), persistent=False
            )
        self.norm_pre = nn.Identity()
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(
            *[
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias=qkv_bias,
                    norm_layer=norm_layer,
                    drop_path=rate,
                )
                for rate in rates
            ]
        )
        self.norm = norm_layer(embed_dim)
        self.apply(self._init_module)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def pos_embed_for(self, spatial_dims: int) -> torch.Tensor:
        """The fixed ``(1, prefix + N, D)`` table for 3D volumes or (``unified``) 2D images."""
        if spatial_dims == 3:
            return self.pos_embed
        if spatial_dims == 2 and self.unified:
            return self.pos_embed_2d
        raise ValueError(f"this encoder has no {spatial_dims}D position embedding")

    def embed_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``(B, C, [D,] H, W)`` -> (patch tokens + position embedding ``(B, N, D)``, grid)."""
        tokens, grid = self.patch_embed(x)
        pos = self.pos_embed_for(len(grid))
        return tokens + pos[:, self.num_prefix_tokens :], grid

    def _add_prefix(self, tokens: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        if self.cls_token is None:
            return tokens
        cls = self.cls_token + self.pos_embed_for(spatial_dims)[:, :1]
        return torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` or ``(B, C, H, W)`` -> ``(B, prefix + N, embed_dim)``."""
        tokens, grid = self.embed_patches(x)
        tokens = self._add_prefix(tokens, len(grid))
        return self.norm(self.blocks(self.norm_pre(tokens)))

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, prefix + N, D)`` -> ``(B, D)``: the class token, or the mean patch token."""
        if self.global_pool == "token":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens :].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` (or ``(B, C, H, W)`` when unified) -> pooled ``(B, embed_dim)``
        (ViT, Dosovitskiy et al. 2021)."""
        return self.forward_head(self.forward_features(x))

    def monai_vit_kwargs(self, classification: bool = False) -> dict[str, Any]:
        """Keyword arguments of the ``monai.networks.nets.ViT`` these weights load into."""
        return {
            "in_channels": self.patch_embed.in_chans,
            "img_size": list(self.img_size),
            "patch_size": self.patch_embed.patch_size[0],
            "hidden_size": self.embed_dim,
            "mlp_dim": int(self.embed_dim * self.mlp_ratio),
            "num_layers": self.depth,
            "num_heads": self.num_heads,
            "proj_type": "conv",
            "classification": bool(classification),
            "qkv_bias": True,
            "spatial_dims": 3,
        }


# (our block-relative name, MONAI's); everything else in a block has the same name in both.
_BLOCK_RENAMES = (("attn.proj.", "attn.out_proj."), ("mlp.fc1.", "mlp.linear1."))
_BLOCK_RENAMES += (("mlp.fc2.", "mlp.linear2."),)
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_PATCH_OURS, _PATCH_MONAI = "patch_embed.proj.", "patch_embedding.patch_embeddings."
_POS_MONAI = "patch_embedding.position_embeddings"


def _rename_block_key(rest: str, to_monai: bool) -> str:
    for ours, theirs in _BLOCK_RENAMES:
        src, dst = (ours, theirs) if to_monai else (theirs, ours)
        if rest.startswith(src):
            return dst + rest[len(src) :]
    return rest


def _monai_block_extras(hidden_size: int) -> dict[str, torch.Tensor]:
    """Keys a fresh MONAI ``TransformerBlock`` has that ours lack (1.6: ``norm_cross_attn``)."""
    from monai.networks.blocks import TransformerBlock

    fresh = TransformerBlock(hidden_size, 4, 1, qkv_bias=True).state_dict()
    ours = {_rename_block_key(k, True) for k in Block(hidden_size, 1, qkv_bias=True).state_dict()}
    return {k: v for k, v in fresh.items() if k not in ours}


def to_monai_state_dict(
    vit3d_state: Mapping[str, torch.Tensor], include_class_token: bool = False
) -> dict[str, torch.Tensor]:
    """Our ``ViT3D.state_dict()`` -> a state dict for ``monai.networks.nets.ViT`` (see the table).

    ``include_class_token`` keeps ``cls_token`` for a MONAI ViT built with ``classification=True``
    (load that one with ``strict=False``: ``classification_head.*`` has no counterpart).
    The 2D patch kernel of a unified encoder is dropped.
    """
    prefix = 1 if "cls_token" in vit3d_state else 0
    out: dict[str, torch.Tensor] = {}
    blocks: set[int] = set()
    for key, value in vit3d_state.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            blocks.add(int(match[1]))
            out[f"blocks.{match[1]}.{_rename_block_key(match[2], True)}"] = value
        elif key.startswith(_PATCH_OURS):
            out[_PATCH_MONAI + key[len(_PATCH_OURS) :]] = value
        elif key == "pos_embed":
            out[_POS_MONAI] = value[:, prefix:]
        elif key == "cls_token":
            if include_class_token:
                out["cls_token"] = value
        elif key.startswith("norm."):
            out[key] = value
        elif not key.startswith("patch_embed.proj_2d."):
            raise KeyError(f"{key!r} is not a ViT3D weight; pass ViT3D.state_dict()")
    if blocks:
        extras = _monai_block_extras(out[_POS_MONAI].shape[-1])
        for i in sorted(blocks):
            out.update({f"blocks.{i}.{k}": v.clone() for k, v in extras.items()})
    return out
