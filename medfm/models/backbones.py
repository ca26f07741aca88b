"""ViT backbones built by name, never downloaded: timm 2D, medfm 3D and unified 2D + 3D.

``model.name`` is either

- any timm Vision Transformer (``vit_tiny_patch16_224``, ``vit_small_patch16_224``, ...):
  ``patch_size``, ``depth``, ``in_chans`` and ``img_size`` are adapted, the classifier removed,
  and the position embedding fixed to 2D sin-cos as in MAE (He et al. 2022). The result *is* a
  plain timm ``VisionTransformer``, so an encoder saved by medfm loads into timm with identical
  keys;
- ``vit3d_<size>``: a :class:`~medfm.models.vit3d.ViT3D` on ``(D, H, W)`` volumes with
  ``D = data.depth_size`` (else ``data.image_size``) and ``H = W = data.image_size``; its weights
  load into MONAI's ``ViT`` (see :mod:`medfm.models.vit3d`);
- ``unified_<size>``: the same ViT3D with ``unified=True``, which also takes 2D ``(H, W)`` images
  through the same transformer (Cai et al. 2022, "Uni4Eye").

``<size>`` is a key of :data:`SIZES`; ``model.depth`` (when set) overrides the size's depth.
Every name is registered in :data:`BACKBONES` (as timm's ``register_model``), through which
:func:`create_backbone` builds.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medfm.models.conv_stem import use_conv_stem
from medfm.models.pos_embed import sincos_2d
from medfm.models.vit3d import ViT3D
from medfm.registry import Registry

SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}
"""Named sizes: ``(embed_dim, depth, num_heads)``, as timm's ViT-Ti/S/B."""

_MEDFM_NAME = re.compile(r"(vit3d|unified)_(\w+)")


log = logging.getLogger(__name__)


def medfm_model_names() -> list[str]:
    """The 3D and unified backbone names: ``vit3d_tiny``, ..., ``unified_base``."""
    return [f"{kind}_{size}" for kind in ("vit3d", "unified") for size in SIZES]


def is_medfm_3d(name: str) -> bool:
    """Whether ``model.name`` is a medfm :class:`ViT3D` (``vit3d_*`` / ``unified_*``)."""
    match = _MEDFM_NAME.fullmatch(str(name))
    return bool(match) and match[2] in SIZES


def vit3d_kwargs(
    model_cfg: Mapping[str, Any], image_size: int, channels: int, depth_size: int | None = None
) -> dict[str, Any]:
    """The :class:`ViT3D` keyword arguments of a ``vit3d_*`` / ``unified_*`` ``model.name``."""
    name = str(model_cfg["name"])
    if not is_medfm_3d(name):
        raise ValueError(f"model.name={name!r} is not one of {', '.join(medfm_model_names())}")
    kind, size = _MEDFM_NAME.fullmatch(name).groups()
    embed_dim, depth, heads = SIZES[size]
    image_size = int(image_size)
    return {
        "img_size": (int(depth_size or image_size), image_size, image_size),
        "patch_size": int(model_cfg["patch_size"]),
        "in_chans": int(channels),
        "embed_dim": embed_dim,
        "depth": int(model_cfg.get("depth") or depth),
        "num_heads": heads,
        "unified": kind == "unified",
    }


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


BackboneFactory = Callable[[Mapping[str, Any], int, int, int | None], nn.Module]

BACKBONES: Registry[BackboneFactory] = Registry("backbone")
"""Backbone factories by ``model.name``: every timm ViT (``vit_*``), ``vit3d_<size>`` and
``unified_<size>``. Each is called as ``factory(model_cfg, image_size, channels, depth_size)``."""


def _build_vit3d(
    model_cfg: Mapping[str, Any], image_size: int, channels: int, depth_size: int | None = None
) -> ViT3D:
    """A :class:`ViT3D` (``vit3d_*``) or unified 2D + 3D one (``unified_*``)."""
    return ViT3D(**vit3d_kwargs(model_cfg, image_size, channels, depth_size))


def _build_timm_vit(
    model_cfg: Mapping[str, Any], image_size: int, channels: int, depth_size: int | None = None
) -> VisionTransformer:
    """A timm ``VisionTransformer`` with a frozen 2D sin-cos position embedding (``depth_size``
    is ignored)."""
    model = timm.create_model(
        str(model_cfg["name"]),
        pretrained=False,
        **backbone_kwargs(model_cfg, image_size, channels),
    )
    if model_cfg.get("stem", "patch") == "conv":
        use_conv_stem(model)
    elif model_cfg.get("stem", "patch") != "patch":
        raise ValueError(f"model.stem={model_cfg.get('stem')!r}: use 'patch' or 'conv'")
    grid_h, grid_w = model.patch_embed.grid_size
    n_prefix = model.num_prefix_tokens if not model.no_embed_class else 0
    table = sincos_2d(model.embed_dim, grid_h, grid_w, cls_token=False)
    if n_prefix:
        table = torch.cat([torch.zeros(n_prefix, model.embed_dim), table])
    model.pos_embed.data.copy_(table.unsqueeze(0))
    model.pos_embed.requires_grad_(False)
    if model_cfg.get("pretrained"):
        load_local_weights(model, model_cfg["pretrained"])
    return model


for _name in medfm_model_names():
    BACKBONES.register(_name)(_build_vit3d)
for _name in timm.list_models("vit_*"):
    BACKBONES.register(_name)(_build_timm_vit)


def _unknown_backbone(name: str) -> ValueError:
    near = difflib.get_close_matches(name, BACKBONES.names(), n=1)
    hint = f" (the nearest valid name is {near[0]!r})" if near else ""
    return ValueError(
        f"model.name={name!r} is not a timm ViT nor one of {', '.join(medfm_model_names())}"
        f"{hint}; try e.g. vit_tiny_patch16_224 or vit3d_tiny"
    )


def create_backbone(
    model_cfg: Mapping[str, Any], image_size: int, channels: int, depth_size: int | None = None
) -> VisionTransformer | ViT3D:
    """A randomly initialised ViT with a frozen sin-cos position embedding, built by
    ``model.name`` through :data:`BACKBONES`.

    timm names give a 2D timm ``VisionTransformer``; ``vit3d_*`` / ``unified_*`` a :class:`ViT3D`
    on ``(depth_size or image_size, image_size, image_size)`` volumes (``depth_size`` is
    ``data.depth_size``; it is ignored for timm names). An unknown name raises a ``ValueError``
    naming the nearest valid one.
    """
    name = str(model_cfg["name"])
    if name not in BACKBONES:
        raise _unknown_backbone(name)
    return BACKBONES.get(name)(model_cfg, image_size, channels, depth_size)


def load_local_weights(model: VisionTransformer, path: str | os.PathLike) -> None:
    """Load timm ViT weights from a local ``.safetensors`` / ``.pth`` / ``.bin`` file (never a hub).

    timm's ``checkpoint_filter_fn`` adapts them to this model: it resamples the position
    embedding and the patch-embedding kernel to our image and patch size, and drops the classifier.
    RGB weights meet grey-scale data (``data.channels=1``) through timm's ``adapt_input_conv``,
    which sums the kernel over its input channels, as timm does for ``in_chans=1``.
    """
    from timm.models import adapt_input_conv
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained={path} does not exist; pass a local weights "
            "file (nothing is downloaded)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state.get("state_dict", state))
    key, channels = "patch_embed.proj.weight", model.patch_embed.proj.in_channels
    if key in state and state[key].ndim == 4 and state[key].shape[1] != channels:
        state[key] = adapt_input_conv(channels, state[key])
    state = checkpoint_filter_fn(state, model)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        log.warning(
            "Loaded %s: %d missing keys (%s...), %d unexpected",
            path,
            len(missing),
            ", ".join(missing[:3]),
            len(unexpected),
        )


def feature_layers(features: str) -> int:
    """How many last blocks ``eval.features`` asks for: ``last`` -> 1, ``last4`` -> 4,
    ``lastN`` -> N."""
    text = str(features)
    count = text.removeprefix("last")
    if not text.startswith("last") or not (count == "" or count.isdigit() and int(count) > 0):
        raise ValueError(
            f"features={features!r}: use 'last' (the last block) or 'lastN', e.g. 'last4' "
            "(the last 4 blocks concatenated, as DINO's linear evaluation)"
        )
    return int(count or 1)


def encode_layers(
    model: nn.Module, images: torch.Tensor, pooling: str = "mean", features: str = "last"
) -> torch.Tensor:
    """``(B, C, ...)`` -> ``(B, n * D)``: the pooled tokens of each of the last ``n`` blocks
    (``features="lastN"``), each through the model's final norm, concatenated from the earliest
    block to the last, as DINO's linear evaluation reads a ViT (Caron et al. 2021, "Emerging
    Properties in Self-Supervised Vision Transformers", the last 4 blocks). ``"last"`` is
    :func:`encode`. Block outputs are taken with forward hooks, so timm ViTs and medfm's
    :class:`~medfm.models.vit3d.ViT3D` are read the same way (timm's own
    ``forward_intermediates`` does not exist on ViT3D)."""
    n = feature_layers(features)
    if n == 1:
        return encode(model, images, pooling)
    blocks = list(getattr(model, "blocks", []))
    if len(blocks) < n:
        raise ValueError(
            f"features={features!r} needs a transformer with at least {n} blocks; this model "
            f"has {len(blocks)}; use features=last"
        )
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in blocks[-n:]]
    try:
        model.forward_features(images)
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat([_pool(model, model.norm(tokens), pooling) for tokens in outputs], dim=1)


def encode(model: nn.Module, images: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """``(B, C, H, W)`` or ``(B, C, D, H, W)`` -> ``(B, D)``: mean patch token or class token."""
    return _pool(model, model.forward_features(images), pooling)  # tokens (B, prefix + N, D)


def _pool(model: nn.Module, tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(B, prefix + N, D)`` tokens (or a CNN's ``(B, D, *spatial)`` maps) -> ``(B, D)``."""
    if tokens.ndim > 3:  # a convolutional timm model: (B, D, *spatial) feature maps
        if pooling == "cls":
            raise ValueError("pooling='cls' needs a ViT with a class token; use 'mean'")
        return tokens.flatten(2).mean(dim=2)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    if pooling == "cls":
        if not prefix:
            raise ValueError("model.pooling='cls' needs a model with a class token; use 'mean'")
        return tokens[:, 0]
    if pooling == "mean":
        return tokens[:, prefix:].mean(dim=1)
    raise ValueError(f"model.pooling={pooling!r}: use 'mean' or 'cls'")
