"""Export an encoder artifact to weights that plain timm or MONAI load, without medfm.

:func:`export_encoder` reads a run folder's ``encoder.safetensors`` + ``config.yaml`` (see
:mod:`medfm.models.encoder_io`) and writes ``OUT/model.safetensors`` and ``OUT/config.json``
``{"architecture": ..., "kwargs": ...}``:

- ``to="timm"`` (2D timm encoders): the state dict is timm's own, including the frozen 2D sin-cos
  ``pos_embed``, and it loads with ``strict=True`` into
  ``timm.create_model(cfg["architecture"], pretrained=False, **cfg["kwargs"])``;
- ``to="monai"`` (3D ``vit3d_*`` / ``unified_*`` encoders): the keys are those of
  ``monai.networks.nets.ViT(**cfg["kwargs"])`` (see :func:`medfm.models.vit3d.to_monai_state_dict`).
  medfm's 3D encoders have a class token, which MONAI only has with ``classification=True``, so the
  kwargs set it and the weights load with ``strict=False``: only ``classification_head.*`` (MONAI's
  own untrained head) is missing. ``model.norm(hidden_states[-1])`` then equals medfm's
  ``forward_features``. A unified encoder's 2D patch kernel has no MONAI counterpart and is dropped.

An encoder with ``model.stem: conv`` (:mod:`medfm.models.conv_stem`) is not exportable: its patch
embedding is medfm's ``ConvStem``, which neither timm nor MONAI builds from a name and kwargs.

Example:
    >>> from medfm.models.export import export_encoder
    >>> export_encoder("runs/mae", "timm", "runs/mae/timm")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from medfm.config import ConfigError
from medfm.io import atomic_path, write_json
from medfm.models.backbones import is_medfm_3d
from medfm.models.encoder_io import load_encoder, load_encoder_config

TARGETS = ("timm", "monai")
"""The export targets of :func:`export_encoder`."""

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MONAI_ARCHITECTURE = "monai.networks.nets.ViT"


class ExportError(ConfigError):
    """The encoder cannot be exported to the requested target (the message says why)."""


def _check_target(name: str, stem: str, to: str) -> None:
    if to not in TARGETS:
        raise ExportError(f"--to {to!r}: use one of {', '.join(TARGETS)}")
    if stem == "conv":
        raise ExportError(
            f"model.stem=conv: this encoder ({name}) replaces timm's patch embedding by medfm's "
            "ConvStem (medfm.models.conv_stem), which plain timm cannot build from a model name "
            "and kwargs, and --to monai is only for 3D encoders; load it with "
            "medfm.models.load_encoder (or build the timm model, apply "
            "medfm.models.conv_stem.use_conv_stem, then load encoder.safetensors)"
        )
    if is_medfm_3d(name) and to == "timm":
        raise ExportError(
            f"model.name={name} is a 3D encoder (medfm ViT3D), which timm has no model for; "
            "use --to monai (monai.networks.nets.ViT)"
        )
    if not is_medfm_3d(name) and to == "monai":
        raise ExportError(
            f"model.name={name} is a 2D timm encoder; --to monai exports 3D (vit3d_* / unified_*) "
            "encoders only; use --to timm"
        )


def _timm_export(model: torch.nn.Module, cfg: Any) -> tuple[dict[str, torch.Tensor], dict]:
    """timm's own state dict (with the frozen ``pos_embed``) and ``create_model`` arguments."""
    state = model.state_dict()  # pos_embed is a frozen Parameter, so it is in the state dict
    if "pos_embed" not in state and getattr(model, "pos_embed", None) is not None:
        raise ExportError(f"{cfg.model.name}: the position embedding is not in the state dict")
    config = {
        "architecture": str(cfg.encoder.timm_name),
        "kwargs": OmegaConf.to_container(cfg.encoder.timm_kwargs, resolve=True),
        "load": "timm.create_model(architecture, pretrained=False, **kwargs)"
        ".load_state_dict(weights, strict=True)",
    }
    return state, config


def _monai_export(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """MONAI ``ViT`` keys (class token kept) and the ``ViT`` keyword arguments."""
    from medfm.models.vit3d import to_monai_state_dict

    class_token = model.cls_token is not None
    state = to_monai_state_dict(model.state_dict(), include_class_token=class_token)
    load = "monai.networks.nets.ViT(**kwargs).load_state_dict(weights, strict=True)"
    if class_token:
        load = (
            "monai.networks.nets.ViT(**kwargs).load_state_dict(weights, strict=False) "
            "(only classification_head.* is missing); features: model.norm(hidden_states[-1]), "
            "class token first"
        )
    config = {
        "architecture": MONAI_ARCHITECTURE,
        "kwargs": model.monai_vit_kwargs(classification=class_token),
        "load": load,
    }
    return state, config


def export_encoder(
    run_dir: str | os.PathLike, to: str, out_dir: str | os.PathLike
) -> tuple[Path, Path]:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` for plain timm or MONAI.

    ``run_dir`` is an encoder artifact (a ``medfm pretrain`` out_dir or its
    ``encoder.safetensors``); ``to`` is ``"timm"`` (2D encoders) or ``"monai"`` (3D encoders).
    A wrong target, or a ``model.stem: conv`` encoder, raises :class:`ExportError` saying why.
    Returns the paths of the weights and of the config.
    """
    cfg = load_encoder_config(run_dir)
    name = str(cfg.model.name)
    _check_target(name, str(cfg.model.get("stem", "patch") or "patch"), to)
    model, cfg = load_encoder(run_dir)
    state, config = _timm_export(model, cfg) if to == "timm" else _monai_export(model)
    config["exported_from"] = {"model.name": name, "run_dir": str(run_dir)}
    json.dumps(config)  # fail before writing anything if a value is not JSON
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    out_dir = Path(out_dir)
    weights = out_dir / WEIGHTS
    with atomic_path(weights) as tmp:
        save_file(
            state, str(tmp), metadata={"format": "pt", "architecture": config["architecture"]}
        )
    return weights, write_json(config, out_dir / CONFIG)
