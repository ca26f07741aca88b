"""Masked image modelling + contrastive learning on one encoder, in the spirit of SiT
(Atito et al. 2021, "SiT: Self-supervised vIsion Transformer").

``loss = weight_mim * loss_mae + weight_contrastive * loss_contrastive``, where ``loss_mae`` is
:class:`~medfm.ssl.mae.MAE` on the (un-augmented) batch and ``loss_contrastive`` is
:func:`~medfm.ssl.losses.info_nce` on projected pooled features of two augmented views, both
through the same encoder. With ``weight_contrastive=0`` the gradient is MAE's. Works on 2D images
with a timm ViT and on 3D volumes (and, unified, 2D images) with a medfm ``ViT3D``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medfm.models.backbones import encode
from medfm.models.vit3d import ViT3D
from medfm.ssl.heads import ProjectionHead
from medfm.ssl.losses import info_nce
from medfm.ssl.mae import MAE
from medfm.ssl.simclr import default_views
from medfm.ssl.views import call_views


class Hybrid(nn.Module):
    """``forward({"image": (B, C, [D,] H, W)})`` -> ``{"loss", "loss_contrastive"}`` plus MAE's
    detached terms (``loss_mae``, ``mask_fraction``, ...); all but ``loss`` detached. A
    ``batch["sample_seed"]`` (one seed per image, as the engine's batches carry) goes to the MAE
    term and to the views (:func:`~medfm.ssl.views.call_views`), whose masks and views then
    depend on each sample alone, not on the batch's split over processes or workers.

    Args:
        encoder: the timm ViT or ViT3D shared by both terms (held once, as ``self.mae.encoder``).
        mae_kwargs: keyword arguments of :class:`~medfm.ssl.mae.MAE` (``mask_ratio``, ...).
        contrastive_kwargs: ``proj_dim`` (128), ``hidden_dim`` (512), ``temperature`` (0.2),
            ``views`` (default :func:`~medfm.ssl.simclr.default_views`), ``pooling`` ("mean").
        weight_mim, weight_contrastive: weights of the two terms (>= 0).
        gather_distributed: in a training-mode forward under ``torch.distributed``, take the
            contrastive negatives from every rank, gathered with gradients (as
            :class:`~medfm.ssl.simclr.SimCLR`; :mod:`medfm.ssl.gather`).
    """

    def __init__(
        self,
        encoder: VisionTransformer | ViT3D,
        mae_kwargs: Mapping[str, Any] | None = None,
        contrastive_kwargs: Mapping[str, Any] | None = None,
        weight_mim: float = 1.0,
        weight_contrastive: float = 1.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if weight_mim < 0 or weight_contrastive < 0:
            raise ValueError(
                f"weights must be >= 0, got weight_mim={weight_mim}, "
                f"weight_contrastive={weight_contrastive}"
            )
        c = dict(contrastive_kwargs or {})
        unknown = set(c) - {"proj_dim", "hidden_dim", "temperature", "views", "pooling"}
        if unknown:
            raise TypeError(f"unknown contrastive_kwargs {sorted(unknown)}")
        self.mae = MAE(encoder, **dict(mae_kwargs or {}))
        self.projector = ProjectionHead(
            encoder.embed_dim, int(c.get("hidden_dim", 512)), int(c.get("proj_dim", 128))
        )
        self.views = c.get("views") or default_views(encoder)
        self.temperature = float(c.get("temperature", 0.2))
        self.pooling = str(c.get("pooling", "mean"))
        self.weight_mim, self.weight_contrastive = weight_mim, weight_contrastive
        self.gather_distributed = gather_distributed

    @property
    def encoder(self) -> VisionTransformer | ViT3D:
        """The shared backbone, the encoder that is saved."""
        return self.mae.encoder

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, [D,] H, W)}`` -> 0-dim ``{"loss", "loss_mae", ...,
        "loss_contrastive"}`` (SiT, Atito et al. 2021)."""
        images = batch["image"]
        # the per-sample seeds make masks and views independent of the batch's split over ranks
        mae_out = self.mae({k: v for k, v in batch.items() if k in ("image", "sample_seed")})
        v1, v2 = call_views(self.views, images, batch.get("sample_seed"))
        features = encode(self.encoder, torch.cat([v1, v2]), self.pooling)  # (2B, D)
        z1, z2 = self.projector(features).chunk(2)
        gathers = self.gather_distributed and self.training
        contrastive = info_nce(z1, z2, self.temperature, gather_distributed=gathers)
        loss = self.weight_mim * mae_out["loss"] + self.weight_contrastive * contrastive
        terms = {k: v for k, v in mae_out.items() if k != "loss"}  # loss_mae, mask_fraction...
        return {"loss": loss, **terms, "loss_contrastive": contrastive.detach()}
