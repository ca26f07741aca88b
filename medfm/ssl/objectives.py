"""Self-supervised objectives by name: ``ssl.objective`` -> an ``nn.Module`` ``batch -> dict``.

Every objective maps ``{"image": (B, C, H, W) in [0, 1], ...}`` to a dict with ``loss`` and
detached 0-dim terms. Every one works with a 2D timm ViT (``model.name=vit_*``) on images and with
a medfm :class:`~medfm.models.vit3d.ViT3D` on volumes ``(B, C, D, H, W)`` (``vit3d_*``), or on
both volumes and 2D images (``unified_*``); the contrastive ones make their views in 3D for
volumes (:mod:`medfm.ssl.views`). Those with an EMA teacher (``dino``, ``dinov2``) or target
(``cae``) also have ``on_step_end()``, which the training loop calls after each optimiser step.

Example:
    >>> from medfm.config import load_config
    >>> from medfm.models.backbones import create_backbone
    >>> cfg = load_config(None, ["ssl.objective=simclr", "model.depth=1"])
    >>> encoder = create_backbone(cfg.model, cfg.data.image_size, cfg.data.channels)
    >>> type(build_objective(encoder, cfg.ssl)).__name__
    'SimCLR'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medfm.config import ConfigError
from medfm.models.vit3d import ViT3D
from medfm.registry import Registry
from medfm.ssl.anatcl import AnatCL, anatcl_kwargs
from medfm.ssl.cae import CAE, cae_kwargs
from medfm.ssl.dino import DINO
from medfm.ssl.dinov2 import DINOv2
from medfm.ssl.hybrid import Hybrid
from medfm.ssl.mae import MAE, mae_kwargs
from medfm.ssl.metadata import MetadataContrastive
from medfm.ssl.simclr import SimCLR
from medfm.ssl.sit import SiT
from medfm.ssl.views import MultiCrop, TwoViews

Encoder = VisionTransformer | ViT3D
ObjectiveFactory = Callable[[Encoder, Mapping[str, Any], str], nn.Module]
OBJECTIVES: Registry[ObjectiveFactory] = Registry("ssl objective")


def _pair(cfg: Mapping[str, Any], key: str) -> tuple[float, float]:
    value = cfg[key]
    if len(value) != 2 or not 0 < float(value[0]) <= float(value[1]):
        raise ConfigError(f"ssl.{key}={list(value)} must be [low, high] with 0 < low <= high")
    return float(value[0]), float(value[1])


def _augment_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~medfm.ssl.views.Augment` settings shared by every view."""
    return {
        "flip_prob": float(cfg["flip_prob"]),
        "brightness": float(cfg["brightness"]),
        "contrast": float(cfg["contrast"]),
        "gamma": float(cfg["gamma"]),
        "jitter_prob": float(cfg["jitter_prob"]),
        "blur_sigma": _pair(cfg, "blur_sigma"),
        "blur_prob": float(cfg["blur_prob"]),
        "noise_std": float(cfg["noise_std"]),
        "noise_prob": float(cfg["noise_prob"]),
        "random_field_strength": float(cfg["random_field_strength"]),
        "random_field_length_scale": float(cfg["random_field_length_scale"]),
        "random_field_affine_strength": float(cfg.get("random_field_affine_strength", 0.0)),
        "random_field_affine_length_scale": float(
            cfg.get("random_field_affine_length_scale", 16.0)
        ),
    }


def _two_views(encoder: Encoder, cfg: Mapping[str, Any]) -> TwoViews:
    size = tuple(encoder.patch_embed.img_size)
    return TwoViews(size, scale=_pair(cfg, "crop_scale"), **_augment_kwargs(cfg))


def _multi_crop(encoder: Encoder, cfg: Mapping[str, Any]) -> MultiCrop:
    size = tuple(encoder.patch_embed.img_size)
    local, patch = int(cfg["local_crop_size"]), encoder.patch_embed.patch_size[0]
    if local % patch or not 0 < local <= min(size):
        raise ConfigError(
            f"ssl.local_crop_size={local} must be a multiple of model.patch_size={patch} and at "
            f"most data.image_size={min(size)}; e.g. ssl.local_crop_size={max(patch, size[0] // 2)}"
        )
    return MultiCrop(
        size,
        local,
        int(cfg["n_local_crops"]),
        global_scale=_pair(cfg, "crop_scale"),
        local_scale=_pair(cfg, "local_crop_scale"),
        **_augment_kwargs(cfg),
    )


@OBJECTIVES.register("mae")
def _mae(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> nn.Module:
    return MAE(encoder, **mae_kwargs(cfg))


def _contrastive_kwargs(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> dict[str, Any]:
    """The settings every SimCLR-style objective shares: projector, temperature, two views."""
    return {
        "proj_dim": int(cfg["proj_dim"]),
        "hidden_dim": int(cfg["proj_hidden_dim"]),
        "temperature": float(cfg["temperature"]),
        "views": _two_views(encoder, cfg),
        "pooling": pooling,
    }


@OBJECTIVES.register("simclr")
def _simclr(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> nn.Module:
    return SimCLR(
        encoder,
        **_contrastive_kwargs(encoder, cfg, pooling),
    )


def _dino_kwargs(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> dict[str, Any]:
    """The settings DINO and DINOv2 share: head, temperatures, centre, EMA and multi-crop."""
    steps = cfg["ema_schedule_steps"]
    return {
        "out_dim": int(cfg["dino_out_dim"]),
        "n_local": int(cfg["n_local_crops"]),
        "teacher_temp": float(cfg["teacher_temp"]),
        "student_temp": float(cfg["student_temp"]),
        "center_momentum": float(cfg["center_momentum"]),
        "momentum": float(cfg["ema_momentum"]),
        "views": _multi_crop(encoder, cfg),
        "momentum_final": float(cfg["ema_momentum_end"]),
        "momentum_steps": int(steps) if steps else None,
        "hidden_dim": int(cfg["dino_hidden_dim"]),
        "bottleneck_dim": int(cfg["dino_bottleneck_dim"]),
        "pooling": pooling,
    }


@OBJECTIVES.register("dino")
def _dino(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> nn.Module:
    return DINO(encoder, **_dino_kwargs(encoder, cfg, pooling))


@OBJECTIVES.register("dinov2")
def _dinov2(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> nn.Module:
    ratio = cfg["ibot_mask_ratio"]
    if len(ratio) != 2 or not 0 <= float(ratio[0]) <= float(ratio[1]) < 1:
        raise ConfigError(
            f"ssl.ibot_mask_ratio={list(ratio)} must be [low, high] with 0 <= low <= high < 1"
        )
    return DINOv2(
        encoder,
        **_dino_kwargs(encoder, cfg, pooling),
        ibot_weight=float(cfg["ibot_weight"]),
        koleo_weight=float(cfg["koleo_weight"]),
        mask_prob=float(cfg["ibot_mask_prob"]),
        mask_ratio=(float(ratio[0]), float(ratio[1])),
        separate_head=bool(cfg["ibot_separate_head"]),
        centering=str(cfg["dinov2_centering"]),
        sinkhorn_iterations=int(cfg["sinkhorn_iterations"]),
    )


@OBJECTIVES.register("cae")
def _cae(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> nn.Module:
    return CAE(encoder, **cae_kwargs(cfg))


@OBJECTIVES.register("hybrid")
def _hybrid(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> nn.Module:
    return Hybrid(
        encoder,
        mae_kwargs=mae_kwargs(cfg),
        contrastive_kwargs=_contrastive_kwargs(encoder, cfg, pooling),
        weight_mim=float(cfg["weight_mim"]),
        weight_contrastive=float(cfg["weight_contrastive"]),
    )


@OBJECTIVES.register("metadata")
def _metadata(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> nn.Module:
    return MetadataContrastive(
        encoder,
        sigma=float(cfg["meta_sigma"]),
        meta_key=str(cfg["meta_key"]),
        **_contrastive_kwargs(encoder, cfg, pooling),
    )


@OBJECTIVES.register("anatcl")
def _anatcl(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> nn.Module:
    return AnatCL(
        encoder,
        **anatcl_kwargs(cfg),
        **_contrastive_kwargs(encoder, cfg, pooling),
    )


@OBJECTIVES.register("sit")
def _sit(encoder: Encoder, cfg: Mapping[str, Any], pooling: str) -> nn.Module:
    try:
        return SiT(
            encoder,
            **_contrastive_kwargs(encoder, cfg, pooling),
            corrupt_ratio=float(cfg["sit_corrupt_ratio"]),
            max_group=float(cfg["sit_max_group"]),
            corrupt_probs=[float(p) for p in cfg["sit_corrupt_probs"]],
            weighting=str(cfg["sit_weighting"]),
            weights=[float(w) for w in cfg["sit_weights"]],
            corrupted_weight=float(cfg["sit_corrupted_weight"]),
        )
    except ValueError as err:  # each message starts with the setting's name
        prefix = "model." if str(err).startswith("pooling") else "ssl.sit_"
        raise ConfigError(f"{prefix}{err}") from None


def build_objective(
    encoder: Encoder, ssl_cfg: Mapping[str, Any], pooling: str = "mean"
) -> nn.Module:
    """The objective named by ``ssl.objective``, configured by the other ``ssl.*`` keys.

    Args:
        encoder: the timm ViT or medfm ViT3D to train (kept by reference; the objective trains it
            in place); for the contrastive objectives anything else raises a ``ConfigError``.
        ssl_cfg: the ``ssl`` section of the config (see ``medfm.config.DEFAULTS["ssl"]``).
        pooling: ``model.pooling`` for the contrastive objectives' pooled features.
    """
    name = str(ssl_cfg["objective"])
    if name not in OBJECTIVES:
        raise ConfigError(
            f"ssl.objective={name!r} is not available; use one of {', '.join(OBJECTIVES.names())}"
        )
    if name != "mae" and not isinstance(encoder, VisionTransformer | ViT3D):
        raise ConfigError(
            f"ssl.objective={name!r} needs a timm ViT (model.name=vit_*) or a medfm ViT3D "
            f"(model.name=vit3d_* / unified_*), got {type(encoder).__name__}; build the encoder "
            "with medfm.models.create_backbone"
        )
    return OBJECTIVES.get(name)(encoder, ssl_cfg, pooling)
