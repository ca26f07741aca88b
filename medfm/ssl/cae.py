"""CAE: Context Autoencoder (Chen et al. 2022, "Context Autoencoder for Self-Supervised
Representation Learning"), for 2D images and 3D volumes.

With ``B`` images of ``N`` patches, ``K`` visible and ``M = N - K`` masked (block-wise in boxes
of at least 16 patches as CAE's ``min_num_patches``, or ``M`` when fewer, the same count for every
image, :func:`~medfm.ssl.masking.block_masking`), ``D`` the encoder width:

1. **Encoder** (the ViT being trained, timm or :class:`~medfm.models.vit3d.ViT3D`) on the visible
   patches only: patch embeddings + position embedding of the ``K`` visible patches (and the class
   token) -> latents ``Z_v`` ``(B, prefix + K, D)``.
2. **Latent contextual regressor**: ``regressor_depth`` cross-attention blocks
   (:class:`CrossAttentionBlock`) whose ``M`` queries start as a learned mask token plus the
   encoder's position embedding of the masked positions; keys and values are ``Z_v`` and the
   current queries (keys with position embeddings), as CAE does -> predicted latents ``Z_m``
   ``(B, M, D)``. The regressor sees the visible latents and the masked *positions* only.
3. **Alignment**: ``MSE(Z_m, T_m)`` with ``T_m`` ``(B, M, D)`` the target encoder's latents of
   the masked patches, computed without gradient from the masked patches alone (the encoder
   given the masked patches as its visible set, as CAE's code) and in eval mode (no dropout or
   drop-path noise in the targets). The target encoder is the encoder itself
   (``target="stop_gradient"``, CAE's default) or an EMA copy (``target="ema"``; call
   :meth:`CAE.on_step_end` after each optimiser step).
4. **Decoder** on ``Z_m`` only: a linear map to ``decoder_dim``, a fixed sin-cos position
   embedding of the masked positions, ``decoder_depth`` self-attention blocks, and a linear head
   to the pixels of each masked patch ``(B, M, p^dims * C)``.

``loss = loss_reconstruction + align_weight * loss_align`` (the paper uses ``align_weight = 2``).

What differs from the paper: the decoder predicts the masked patches' *pixels*, normalised per
patch (MAE's ``norm_pix_loss``, He et al. 2022), instead of DALL-E tokenizer ids with a
cross-entropy (no tokenizer is downloaded, and none exists for 3D). The blocks are pre-norm
(CAE's regressor block normalises the attention output instead), the decoder is narrower than
the encoder (``decoder_dim``), and there is no layer scale or relative position bias. Masks are
drawn per sample from ``batch["sample_seed"]`` (so 1 or N processes and a resumed run mask a
sample alike).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from medfm.models.pos_embed import sincos_2d, sincos_3d
from medfm.ssl.ema import EMATeacher, cosine_momentum
from medfm.ssl.mae import dims_suffix, part_for_dims
from medfm.ssl.masking import block_masking, num_visible
from medfm.ssl.patches import patchify
from medfm.ssl.views import resolve_seeds

TARGETS = ("stop_gradient", "ema")
MIN_BLOCK_PATCHES = 16  # CAE's (and BEiT's) min_num_patches of a mask box


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` (and every submodule) in eval mode, then restore each one's mode: the
    alignment targets get no dropout or drop-path noise."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _gather_rows(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B or 1, N, D)``, ``ids`` ``(B, n)`` -> ``(B, n, D)``."""
    x = x.expand(len(ids), -1, -1)
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention block of CAE's regressor: ``queries (B, M, D)`` attend to
    ``[context (B, L, D); queries]``, then an MLP; ``-> (B, M, D)``.

    Queries and keys carry their position embeddings; values do not (as CAE's ``RegressorBlock``).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q, self.norm_k, self.norm_v = (nn.LayerNorm(dim) for _ in range(3))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        pos_queries: torch.Tensor,
        pos_context: torch.Tensor,
    ) -> torch.Tensor:
        """Queries ``(B, M, D)`` and context ``(B, L, D)`` with their position embeddings ->
        updated queries ``(B, M, D)`` (CAE, Chen et al. 2022)."""
        kv = torch.cat([context, queries], dim=1)
        pos_kv = torch.cat([pos_context, pos_queries], dim=1)
        q = self.norm_q(queries + pos_queries)
        attended = self.attn(q, self.norm_k(kv + pos_kv), self.norm_v(kv), need_weights=False)[0]
        x = queries + attended
        return x + self.mlp(self.norm_mlp(x))


def _num_heads(encoder: nn.Module) -> int:
    return int(getattr(encoder, "num_heads", 0) or encoder.blocks[0].attn.num_heads)


class CAE(nn.Module):
    """CAE around a ViT. ``forward({"image": (B, C, H, W) or (B, C, D, H, W)})`` -> 0-dim
    ``{"loss", "loss_cae", "loss_reconstruction", "loss_align", "mask_fraction"}`` (all but
    ``loss`` detached). See the module docstring.

    Args:
        encoder: the timm ViT or medfm ViT3D to train (a unified ViT3D trains on 2D and 3D
            batches; each dimensionality has its own decoder position table and pixel head).
        mask_ratio: fraction of patches masked, ``N - round(N * (1 - mask_ratio))`` per image.
        regressor_depth: cross-attention blocks of the regressor (width = the encoder's).
        decoder_dim, decoder_depth, decoder_heads: the pixel decoder.
        norm_pix_loss: per-patch normalised pixel targets (MAE).
        align_weight: weight of the alignment loss (>= 0).
        target: ``"stop_gradient"`` (the encoder, without gradient) or ``"ema"`` (an EMA copy).
        momentum, momentum_final, momentum_steps: the EMA target's cosine momentum schedule
            (as :class:`~medfm.ssl.dino.DINO`); unused with ``"stop_gradient"``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        mask_ratio: float = 0.5,
        regressor_depth: int = 2,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        align_weight: float = 2.0,
        target: str = "stop_gradient",
        momentum: float = 0.996,
        momentum_final: float = 1.0,
        momentum_steps: int | None = None,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target={target!r}: use one of {', '.join(TARGETS)}")
        if align_weight < 0:
            raise ValueError(f"align_weight must be >= 0, got {align_weight}")
        num_visible(2, mask_ratio)  # checks 0 <= mask_ratio < 1
        self.encoder = encoder
        self.mask_ratio, self.norm_pix_loss = float(mask_ratio), bool(norm_pix_loss)
        self.align_weight, self.target_kind = float(align_weight), target
        self.patch = encoder.patch_embed.patch_size[0]
        self.channels = encoder.patch_embed.proj.in_channels
        dim, grid = encoder.embed_dim, tuple(encoder.patch_embed.grid_size)
        self.spatial_dims = len(grid)
        grids = {self.spatial_dims: grid}
        if getattr(encoder, "unified", False):
            grids[2] = tuple(encoder.patch_embed.grid_size_2d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        heads = _num_heads(encoder)
        self.regressor = nn.ModuleList(
            [CrossAttentionBlock(dim, heads) for _ in range(regressor_depth)]
        )
        self.regressor_norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, decoder_heads, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        for dims, g in grids.items():
            table = sincos_2d(decoder_dim, *g) if dims == 2 else sincos_3d(decoder_dim, *g)
            suffix = self._suffix(dims)
            self.register_buffer(f"decoder_pos{suffix}", table.unsqueeze(0), False)
            pixels = self.patch**dims * self.channels
            setattr(self, f"decoder_pred{suffix}", nn.Linear(decoder_dim, pixels))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.target = EMATeacher(encoder) if target == "ema" else None
        self.momentum, self.momentum_final = momentum, momentum_final
        self.momentum_steps = momentum_steps
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def _suffix(self, spatial_dims: int) -> str:
        return dims_suffix(self.spatial_dims, spatial_dims)

    def _part(self, name: str, spatial_dims: int) -> Any:
        return part_for_dims(self, name, spatial_dims)

    @staticmethod
    def _pos_embed(encoder: nn.Module, spatial_dims: int) -> torch.Tensor:
        """The encoder's position table ``(1, prefix + N, D)`` for 2D or 3D input."""
        if hasattr(encoder, "pos_embed_for"):  # ViT3D: 2D (unified) or 3D
            return encoder.pos_embed_for(spatial_dims)
        return encoder.pos_embed

    def pos_table(self, spatial_dims: int) -> torch.Tensor:
        """The encoder's position embedding of the patches ``(1, N, D)`` (the regressor's)."""
        return self._pos_embed(self.encoder, spatial_dims)[:, self.encoder.num_prefix_tokens :]

    @classmethod
    def encode_subset(
        cls, encoder: nn.Module, images: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """``encoder`` on the patches ``ids`` ``(B, n)`` of ``images`` only -> normed latents
        ``(B, prefix + n, D)`` (the class token first, when the encoder has one)."""
        embed = encoder.patch_embed(images)  # ViT3D: (tokens, grid); timm: tokens
        tokens = embed[0] if isinstance(embed, tuple) else embed  # (B, N, D)
        prefix, table = encoder.num_prefix_tokens, cls._pos_embed(encoder, images.ndim - 2)
        x = _gather_rows(tokens + table[:, prefix:], ids)  # (B, n, D)
        if prefix:
            cls_token = (encoder.cls_token + table[:, :1]).expand(len(x), -1, -1)
            x = torch.cat([cls_token, x], dim=1)
        return encoder.norm(encoder.blocks(encoder.norm_pre(x)))

    def target_encoder(self) -> nn.Module:
        """The encoder of the alignment targets: the EMA copy, or the encoder itself."""
        return self.target.module if self.target is not None else self.encoder

    def masks(self, images: torch.Tensor, sample_seeds: torch.Tensor | None) -> torch.Tensor:
        """Block-wise masks ``(B, N)`` (True = masked), exactly ``N - K`` per image, each drawn
        from its sample's seed (the global torch RNG when None); boxes of at least
        :data:`MIN_BLOCK_PATCHES` patches (fewer only when fewer are masked), as CAE."""
        grid = tuple(s // self.patch for s in images.shape[2:])
        n = 1
        for g in grid:
            n *= g
        seeds = resolve_seeds(sample_seeds, images.shape[0])
        n_masked = n - num_visible(n, self.mask_ratio)
        return block_masking(
            grid,
            n_masked,
            seeds,
            True,
            images.device,
            min_patches=min(MIN_BLOCK_PATCHES, n_masked),
        )

    def regress(
        self, latent: torch.Tensor, ids_visible: torch.Tensor, ids_masked: torch.Tensor, pos
    ) -> torch.Tensor:
        """Visible latents ``(B, prefix + K, D)`` -> predicted latents of the masked patches
        ``(B, M, D)``; ``pos`` is the encoder's ``(1, N, D)`` position table."""
        prefix = latent.shape[1] - ids_visible.shape[1]
        pos_context = torch.cat(
            [pos.new_zeros(len(latent), prefix, pos.shape[-1]), _gather_rows(pos, ids_visible)],
            dim=1,
        )
        pos_queries = _gather_rows(pos, ids_masked)  # (B, M, D)
        queries = self.mask_token.expand(len(latent), ids_masked.shape[1], -1)
        for block in self.regressor:
            queries = block(queries, latent, pos_queries, pos_context)
        return self.regressor_norm(queries)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, [D,] H, W)}`` -> 0-dim ``{"loss", "loss_cae",
        "loss_reconstruction", "loss_align", "mask_fraction"}`` (CAE, Chen et al. 2022)."""
        images = batch["image"]
        dims = images.ndim - 2
        masks = self.masks(images, batch.get("sample_seed"))  # (B, N)
        order = masks.to(torch.uint8).argsort(dim=1, stable=True)  # visible first, in order
        k = int((~masks[0]).sum())
        ids_visible, ids_masked = order[:, :k], order[:, k:]
        latent = self.encode_subset(self.encoder, images, ids_visible)  # (B, prefix + K, D)
        predicted = self.regress(latent, ids_visible, ids_masked, self.pos_table(dims))  # (B, M, D)
        target_encoder = self.target_encoder()
        with torch.no_grad(), _eval_mode(target_encoder):
            target = self.encode_subset(target_encoder, images, ids_masked)
            target = target[:, target_encoder.num_prefix_tokens :]  # (B, M, D)
        loss_align = ((predicted - target) ** 2).mean()
        decoder_pos = _gather_rows(self._part("decoder_pos", dims), ids_masked)
        x = self.decoder_norm(self.decoder_blocks(self.decoder_embed(predicted) + decoder_pos))
        pixels = self._part("decoder_pred", dims)(x)  # (B, M, p^dims * C)
        wanted = _gather_rows(patchify(images, self.patch), ids_masked)
        if self.norm_pix_loss:
            mean, var = wanted.mean(-1, keepdim=True), wanted.var(-1, keepdim=True)
            wanted = (wanted - mean) / (var + 1e-6).sqrt()
        loss_reconstruction = ((pixels - wanted) ** 2).mean()
        loss = loss_reconstruction + self.align_weight * loss_align
        return {
            "loss": loss,
            "loss_cae": loss.detach(),
            "loss_reconstruction": loss_reconstruction.detach(),
            "loss_align": loss_align.detach(),
            "mask_fraction": masks.float().mean(),
        }

    def current_momentum(self) -> float:
        """The EMA target's momentum at the current step (cosine schedule)."""
        return cosine_momentum(
            int(self.ema_steps), self.momentum_steps, self.momentum, self.momentum_final
        )

    @torch.no_grad()
    def on_step_end(self) -> None:
        """Move the EMA target towards the encoder (a no-op for ``"stop_gradient"``); call after
        ``optimizer.step()``."""
        if self.target is not None:
            self.target.update(self.encoder, self.current_momentum())
            self.ema_steps += 1


def cae_kwargs(ssl_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`CAE` keyword arguments from the ``ssl`` config section."""
    steps = ssl_cfg["ema_schedule_steps"]
    return {
        "mask_ratio": float(ssl_cfg["mask_ratio"]),
        "regressor_depth": int(ssl_cfg["cae_regressor_depth"]),
        "decoder_dim": int(ssl_cfg["decoder_dim"]),
        "decoder_depth": int(ssl_cfg["decoder_depth"]),
        "decoder_heads": int(ssl_cfg["decoder_heads"]),
        "norm_pix_loss": bool(ssl_cfg["norm_pix_loss"]),
        "align_weight": float(ssl_cfg["cae_align_weight"]),
        "target": str(ssl_cfg["cae_target"]),
        "momentum": float(ssl_cfg["ema_momentum"]),
        "momentum_final": float(ssl_cfg["ema_momentum_end"]),
        "momentum_steps": int(steps) if steps else None,
    }
