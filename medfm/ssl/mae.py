"""Masked autoencoder objective.

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners".

The encoder is a timm ViT and sees the visible patches only; a light transformer decoder fills in
mask tokens and predicts the pixels of every patch; the loss is the mean squared error on masked
patches, with per-patch normalised targets when ``norm_pix_loss``.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from medfm.models.pos_embed import sincos_2d
from medfm.ssl.masking import random_masking
from medfm.ssl.patches import patchify


class MAE(nn.Module):
    """MAE around a timm ``VisionTransformer``. ``forward({"image": (B, C, H, W)})`` -> dict."""

    def __init__(
        self,
        encoder: VisionTransformer,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch = encoder.patch_embed.patch_size[0]
        self.channels = encoder.patch_embed.proj.in_channels
        self.grid = tuple(encoder.patch_embed.grid_size)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        table = sincos_2d(decoder_dim, *self.grid)
        self.register_buffer("decoder_pos", table.unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, decoder_heads, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * self.channels)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.encoder
        x = enc.patch_embed(images)  # (B, N, D)
        prefix = enc.num_prefix_tokens
        x = x + enc.pos_embed[:, prefix:]
        x, mask, ids_restore = random_masking(x, self.mask_ratio)  # (B, K, D)
        if prefix:
            cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
        x = enc.norm(enc.blocks(enc.norm_pre(x)))  # (B, 1 + K, D)
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)  # (B, 1 + K, Dd)
        prefix = self.encoder.num_prefix_tokens
        b, n = ids_restore.shape
        masks = self.mask_token.expand(b, n - (x.shape[1] - prefix), -1)
        patches = torch.cat([x[:, prefix:], masks], dim=1)
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :prefix], patches + self.decoder_pos], dim=1)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, prefix:])  # (B, N, p*p*C)

    def forward_loss(
        self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        target = patchify(images, self.patch)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        latent, mask, ids_restore = self.forward_encoder(images)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(images, pred, mask)
        return {"loss": loss, "loss_mae": loss.detach(), "mask_fraction": mask.mean().detach()}


def build_objective(encoder: VisionTransformer, ssl_cfg: DictConfig) -> nn.Module:
    """The objective named by ``ssl.objective`` (this release: ``mae``)."""
    if ssl_cfg.objective != "mae":
        raise ValueError(f"ssl.objective={ssl_cfg.objective!r} is not available; use 'mae'")
    return MAE(
        encoder,
        mask_ratio=float(ssl_cfg.mask_ratio),
        decoder_dim=int(ssl_cfg.decoder_dim),
        decoder_depth=int(ssl_cfg.decoder_depth),
        decoder_heads=int(ssl_cfg.decoder_heads),
        norm_pix_loss=bool(ssl_cfg.norm_pix_loss),
    )
