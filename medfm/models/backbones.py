"""2D ViT backbones from timm, built by name, never downloaded.

``model.name`` is any timm Vision Transformer (``vit_tiny_patch16_224``, ``vit_small_patch16_224``,
...); ``patch_size``, ``depth``, ``in_chans`` and ``img_size`` are adapted, the classifier removed,
and the position embedding fixed to 2D sin-cos as in MAE (He et al. 2022). The result *is* a plain
timm ``VisionTransformer``, so an encoder saved by medfm loads into timm with identical keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from medfm.models.pos_embed import sincos_2d


def backbone_kwargs(model_cfg: Mapping[str, Any], image_size: int, channels: int) -> dict[str, Any]:
    """The ``timm.create_model`` keyword arguments that rebuild this backbone."""
    kwargs: dict[str, Any] = {
        "img_size": int(image_size),
        "in_chans": int(channels),
        "patch_size": int(model_cfg["patch_size"]),
        "num_classes": 0,
    }
    if model_cfg.get("depth"):
        kwargs["depth"] = int(model_cfg["depth"])
    return kwargs


def build_backbone(
    model_cfg: Mapping[str, Any], image_size: int, channels: int
) -> VisionTransformer:
    """A randomly initialised timm ViT with a frozen 2D sin-cos position embedding."""
    name = str(model_cfg["name"])
    if name not in timm.list_models("vit_*"):
        raise ValueError(f"model.name={name!r} is not a timm ViT; try e.g. vit_tiny_patch16_224")
    model = timm.create_model(
        name, pretrained=False, **backbone_kwargs(model_cfg, image_size, channels)
    )
    grid_h, grid_w = model.patch_embed.grid_size
    n_prefix = model.num_prefix_tokens if not model.no_embed_class else 0
    table = sincos_2d(model.embed_dim, grid_h, grid_w, cls_token=False)
    if n_prefix:
        table = torch.cat([torch.zeros(n_prefix, model.embed_dim), table])
    model.pos_embed.data.copy_(table.unsqueeze(0))
    model.pos_embed.requires_grad_(False)
    return model


def encode(model: VisionTransformer, images: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, D)`` features: mean of patch tokens, or the class token."""
    tokens = model.forward_features(images)  # (B, prefix + N, D)
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return tokens[:, model.num_prefix_tokens :].mean(dim=1)
    raise ValueError(f"model.pooling={pooling!r}: use 'mean' or 'cls'")
