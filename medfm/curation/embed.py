"""Deep-embedding similarity for ``--method embedding``: any encoder that ``medfm evaluate``
takes (a run folder, ``random:ARCH``, ``timm:NAME`` with local weights, ``models:/NAME@ALIAS``)
embeds each unit; Wolf et al. 2024 compare such similarity with dHash, SSIM and MI.

A unit here is a slice after curation's own preprocessing, not an image under the encoder's
recipe, so each unit is put into the encoder's input form directly: scaled to [0, 1] by its own
min-max, brought to the encoder's channel count (grey repeated, or channels averaged to one) and
resized to its image size (area interpolation, as medfm's ``resize_to_model``). A 2D encoder is
needed, since units are 2D.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from medfm.curation.methods import Embedder
from medfm.models.backbones import encode


def _model_input(units: np.ndarray, channels: int, size: int) -> torch.Tensor:
    """``(N, C, H, W)`` units -> the encoder's ``(N, channels, size, size)`` float batch."""
    x = torch.as_tensor(units, dtype=torch.float32)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - low) / (high - low).clamp_min(1e-8)
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
    return F.interpolate(x, size=(size, size), mode="area")


def make_embedder(
    spec: str,
    data_cfg: DictConfig,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
) -> Embedder:
    """A function from ``(N, C, H, W)`` units to ``(N, D)`` L2-normalised features."""
    from medfm.features.encoders import resolve_encoder

    enc = resolve_encoder(spec, data_cfg, weights, image_size)
    if enc.cfg.data.get("depth_size") or str(enc.cfg.model.get("name", "")).startswith("vit3d"):
        raise ValueError(f"{spec} is a 3D encoder; curation compares 2D units: give a 2D one")
    model = enc.build().eval()
    channels, size = int(enc.cfg.data.channels), int(enc.cfg.data.image_size)
    pooling = str(enc.cfg.model.pooling)

    @torch.no_grad()
    def embed(units: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(units), batch_size):
            batch = _model_input(units[start : start + batch_size], channels, size)
            chunks.append(F.normalize(encode(model, batch, pooling).float(), dim=1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)

    return embed
