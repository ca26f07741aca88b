"""Masked autoencoder objective, for 2D images and 3D volumes, with an optional gradient target.

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners".

The encoder (a timm ViT, or a :class:`~medfm.models.vit3d.ViT3D`) sees the visible patches only;
a light transformer decoder fills in mask tokens and predicts the pixels of every patch; the loss
is the mean squared error on masked patches, with per-patch normalised targets when
``norm_pix_loss``. On volumes the patches are cubes and the decoder's position embedding is the
3D sin-cos table. A unified ViT3D (``unified=True``) is trained on 2D and 3D batches with the
same encoder and decoder blocks; each dimensionality has its own prediction head.

``gradient_target`` adds the second branch of Cai et al. 2022, "Uni4Eye: Unified 2D and 3D
Self-supervised Pre-training via Masked Image Modeling Transformer for Ophthalmic Image
Classification": a second prediction head on the decoder reconstructs the gradient-magnitude map
(:func:`gradient_magnitude`) of the masked patches, and
``loss = loss_pixel + gradient_weight * loss_gradient``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from medfm.models.pos_embed import sincos_2d, sincos_3d
from medfm.ssl.masking import random_masking
from medfm.ssl.patches import patchify


def _smooth_121(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``[1, 2, 1] / 4`` along ``dim``, edges replicated (keeps a constant constant)."""
    n = x.shape[dim]
    padded = torch.cat([x.narrow(dim, 0, 1), x, x.narrow(dim, n - 1, 1)], dim=dim)
    return (padded.narrow(dim, 0, n) + 2 * x + padded.narrow(dim, 2, n)) / 4


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude of ``(B, C, H, W)`` or ``(B, C, D, H, W)``, same shape.

    Each partial derivative is the separable Sobel operator scaled to unit gain: a central
    difference ``(f[i+1] - f[i-1]) / 2`` along its axis (one-sided at the borders, as
    ``torch.gradient``) smoothed by ``[1, 2, 1] / 4`` along every other spatial axis (edges
    replicated); in 3D that is the 3D Sobel operator. So a constant image gives 0 and a linear
    ramp of slope ``a`` gives ``|a|`` everywhere, borders included. Every spatial size must be >= 2.
    """
    axes = list(range(2, images.ndim))
    squares = torch.zeros_like(images)
    for axis in axes:
        grad = torch.gradient(images, dim=axis)[0]
        for other in axes:
            if other != axis:
                grad = _smooth_121(grad, other)
        squares = squares + grad**2
    return squares.sqrt()


def _sincos(dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """``(1, N, dim)`` fixed sin-cos table for a 2D or 3D patch grid."""
    table = sincos_2d(dim, *grid) if len(grid) == 2 else sincos_3d(dim, *grid)
    return table.unsqueeze(0)


def dims_suffix(native: int, spatial_dims: int) -> str:
    """Attribute suffix of a decoder part for ``spatial_dims`` input: ``""`` at the encoder's
    native dimensionality, ``"_2d"`` / ``"_3d"`` for the other one of a unified encoder."""
    return "" if spatial_dims == native else f"_{spatial_dims}d"


def part_for_dims(module: nn.Module, name: str, spatial_dims: int) -> Any:
    """``module.<name><suffix>`` for ``spatial_dims`` input, or a ``ValueError`` saying the
    encoder must be unified to take that dimensionality (MAE and CAE decoders)."""
    part = getattr(module, name + dims_suffix(module.spatial_dims, spatial_dims), None)
    if part is None:
        raise ValueError(
            f"this {type(module).__name__} takes {module.spatial_dims}D input, got "
            f"{spatial_dims}D; build the encoder with unified=True (model.name=unified_*) for 2D "
            "and 3D batches"
        )
    return part


class MAE(nn.Module):
    """MAE around a ViT. ``forward({"image": (B, C, H, W) or (B, C, D, H, W)})`` -> dict.

    The dict has ``loss``, ``loss_mae`` (= ``loss``, detached), ``loss_pixel``, ``loss_gradient``
    (with ``gradient_target``) and ``mask_fraction``; all but ``loss`` are detached scalars.
    """

    def __init__(
        self,
        encoder: nn.Module,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        gradient_target: bool = False,
        gradient_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.gradient_target = gradient_target
        self.gradient_weight = float(gradient_weight)
        self.patch = encoder.patch_embed.patch_size[0]
        self.channels = encoder.patch_embed.proj.in_channels
        self.grid = tuple(encoder.patch_embed.grid_size)
        self.spatial_dims = len(self.grid)
        grids = {self.spatial_dims: self.grid}
        if getattr(encoder, "unified", False):
            grids[2] = tuple(encoder.patch_embed.grid_size_2d)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, decoder_heads, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        for dims, grid in grids.items():
            suffix = self._suffix(dims)
            pixels = self.patch**dims * self.channels
            self.register_buffer(f"decoder_pos{suffix}", _sincos(decoder_dim, grid), False)
            setattr(self, f"decoder_pred{suffix}", nn.Linear(decoder_dim, pixels))
            if gradient_target:
                setattr(self, f"decoder_pred_gradient{suffix}", nn.Linear(decoder_dim, pixels))
        nn.init.normal_(self.mask_token, std=0.02)

    def _suffix(self, spatial_dims: int) -> str:
        return dims_suffix(self.spatial_dims, spatial_dims)

    def _part(self, name: str, spatial_dims: int) -> Any:
        """The decoder position table or head of this dimensionality (a clear error if none)."""
        return part_for_dims(self, name, spatial_dims)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus position embedding, ``(B, N, D)``."""
        enc = self.encoder
        if hasattr(enc, "embed_patches"):  # ViT3D: 2D or 3D input
            return enc.embed_patches(images)[0]
        return enc.patch_embed(images) + enc.pos_embed[:, enc.num_prefix_tokens :]

    def forward_encoder(
        self, images: torch.Tensor, sample_seeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: ``(tokens of kept patches, mask, restore indices)``."""
        enc = self.encoder
        x = self._embed(images)  # (B, N, D)
        prefix = enc.num_prefix_tokens
        x, mask, ids_restore = random_masking(x, self.mask_ratio, sample_seeds=sample_seeds)
        if prefix:
            cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
        x = enc.norm(enc.blocks(enc.norm_pre(x)))  # (B, 1 + K, D)
        return x, mask, ids_restore

    def decode(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, spatial_dims: int | None = None
    ) -> torch.Tensor:
        """Visible latents + mask tokens -> decoded patch features ``(B, N, Dd)``."""
        pos = self._part("decoder_pos", spatial_dims or self.spatial_dims)
        x = self.decoder_embed(latent)  # (B, 1 + K, Dd)
        prefix = self.encoder.num_prefix_tokens
        b, n = ids_restore.shape
        masks = self.mask_token.expand(b, n - (x.shape[1] - prefix), -1)
        patches = torch.cat([x[:, prefix:], masks], dim=1)
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :prefix], patches + pos], dim=1)
        x = self.decoder_norm(self.decoder_blocks(x))
        return x[:, prefix:]

    def _masked_mse(
        self, target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum()

    def forward_loss(
        self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Pixel MSE on masked patches; ``pred`` ``(B, N, p^dims * C)``, ``mask`` ``(B, N)``."""
        return self._masked_mse(patchify(images, self.patch), pred, mask)

    def forward_gradient_loss(
        self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """MSE to the patches of :func:`gradient_magnitude` on masked patches (Uni4Eye)."""
        with torch.no_grad():
            target = patchify(gradient_magnitude(images), self.patch)
        return self._masked_mse(target, pred, mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, H, W) or (B, C, D, H, W)}`` -> 0-dim ``{"loss", "loss_mae",
        "loss_pixel", ...}`` (MAE, He et al. 2022)."""
        images = batch["image"]
        dims = images.ndim - 2
        latent, mask, ids_restore = self.forward_encoder(images, batch.get("sample_seed"))
        features = self.decode(latent, ids_restore, dims)
        loss = self.forward_loss(images, self._part("decoder_pred", dims)(features), mask)
        terms = {"loss_pixel": loss.detach()}
        if self.gradient_target:
            pred = self._part("decoder_pred_gradient", dims)(features)
            loss_gradient = self.forward_gradient_loss(images, pred, mask)
            loss = loss + self.gradient_weight * loss_gradient
            terms["loss_gradient"] = loss_gradient.detach()
        return {
            "loss": loss,
            "loss_mae": loss.detach(),
            **terms,
            "mask_fraction": mask.mean().detach(),
        }


def mae_kwargs(ssl_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`MAE` keyword arguments from the ``ssl`` config section."""
    return {
        "mask_ratio": float(ssl_cfg["mask_ratio"]),
        "decoder_dim": int(ssl_cfg["decoder_dim"]),
        "decoder_depth": int(ssl_cfg["decoder_depth"]),
        "decoder_heads": int(ssl_cfg["decoder_heads"]),
        "norm_pix_loss": bool(ssl_cfg["norm_pix_loss"]),
        "gradient_target": bool(ssl_cfg.get("gradient_target", False)),
        "gradient_weight": float(ssl_cfg.get("gradient_weight", 1.0)),
    }
