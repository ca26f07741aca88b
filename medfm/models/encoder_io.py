"""The encoder artifact: ``encoder.safetensors`` + the resolved ``config.yaml`` that rebuilds it.

Loading needs no pickle. For a 2D timm backbone the state-dict keys are timm's own, so the weights
also load into a plain ``timm.create_model(encoder.timm_name, **encoder.timm_kwargs)`` (with
``model.stem: conv``, pass that model through ``medfm.models.conv_stem.use_conv_stem`` first).
For a 3D (``vit3d_*`` / ``unified_*``) backbone the keys are :class:`~medfm.models.vit3d.ViT3D`'s;
``medfm.models.vit3d.to_monai_state_dict`` maps them onto
``monai.networks.nets.ViT(**encoder.monai_vit_kwargs)`` (no class token there: see that module).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from medfm.config import save_config
from medfm.io import atomic_path
from medfm.models.backbones import backbone_kwargs, create_backbone, is_medfm_3d

WEIGHTS = "encoder.safetensors"
CONFIG = "config.yaml"


def save_encoder(model: torch.nn.Module, cfg: DictConfig, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/encoder.safetensors`` (atomically) and ``out_dir/config.yaml``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_medfm_3d(cfg.model.name):
        encoder = {"monai_vit_kwargs": model.monai_vit_kwargs()}
        metadata = {"format": "pt", "model_name": str(cfg.model.name)}
    else:
        encoder = {
            "timm_name": cfg.model.name,
            "timm_kwargs": backbone_kwargs(cfg.model, cfg.data.image_size, cfg.data.channels),
        }
        metadata = {"format": "pt", "timm_name": str(cfg.model.name)}
    cfg = OmegaConf.merge(cfg, {"encoder": encoder})
    save_config(cfg, out_dir / CONFIG)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return out_dir / WEIGHTS


def _artifact_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" else path
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise FileNotFoundError(
            f"No encoder artifact at {path}: expected {folder / WEIGHTS} and {folder / CONFIG} "
            "(a `medfm pretrain` out_dir)"
        )
    return folder


def load_encoder_config(path: str | os.PathLike) -> DictConfig:
    """The resolved ``config.yaml`` of an encoder artifact (a run folder or its weights file)."""
    return OmegaConf.load(_artifact_dir(path) / CONFIG)


def load_encoder(
    path: str | os.PathLike, random_init: bool = False
) -> tuple[torch.nn.Module, DictConfig]:
    """Rebuild the backbone from ``config.yaml`` and load the weights (unless ``random_init``)."""
    folder = _artifact_dir(path)
    cfg = OmegaConf.load(folder / CONFIG)
    model_cfg = OmegaConf.merge(cfg.model, {"pretrained": None})  # the artifact has the weights
    model = create_backbone(
        model_cfg, cfg.data.image_size, cfg.data.channels, cfg.data.get("depth_size")
    )
    if not random_init:
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval(), cfg
