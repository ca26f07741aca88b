"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers").

A student (encoder + :class:`~medfm.ssl.heads.DINOHead`) sees 2 global and ``n_local`` local
crops (2D images, or 3D volumes with a :class:`~medfm.models.vit3d.ViT3D`); an EMA teacher sees
the global crops; the student matches the teacher's centred, sharpened distribution on every pair
of different crops (:func:`~medfm.ssl.losses.dino_loss`).

Training-loop contract: after every optimiser step call :meth:`DINO.on_step_end`, which moves the
teacher towards the student. ``forward`` never updates the teacher (it must see the student
*after* the step); it does update the centre, as the reference implementation does. Under DDP
the centre's batch mean is all-reduced over ranks
(:meth:`~medfm.ssl.losses.DINOLoss.update_center`), so N processes keep the centre of one
process at the same global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medfm.models.pos_embed import sincos_2d, sincos_3d
from medfm.models.vit3d import ViT3D
from medfm.ssl.ema import EMATeacher, cosine_momentum
from medfm.ssl.heads import DINOHead
from medfm.ssl.losses import DINOLoss
from medfm.ssl.views import MultiCrop, call_views

Encoder = VisionTransformer | ViT3D


def _pool(encoder: Encoder, tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(B, prefix + N, D)`` -> ``(B, D)`` as :func:`~medfm.models.backbones.encode` pools."""
    if pooling == "cls":
        if not encoder.num_prefix_tokens:
            raise ValueError("model.pooling='cls' needs a model with a class token; use 'mean'")
        return tokens[:, 0]
    if pooling == "mean":
        return tokens[:, encoder.num_prefix_tokens :].mean(dim=1)
    raise ValueError(f"model.pooling={pooling!r}: use 'mean' or 'cls'")


def _vit3d_pos_embed(encoder: ViT3D, grid: tuple[int, ...]) -> torch.Tensor:
    """The patch rows ``(1, N', D)`` of ``encoder``'s position table for another patch grid.

    The table is fixed sin-cos, so it is recomputed for ``grid`` (exact: at the native grid it
    equals the stored table). A stored table that is not sin-cos (e.g. learned weights loaded
    from MONAI) is resampled instead, (tri/bi)linearly.
    """
    prefix = encoder.num_prefix_tokens
    stored = encoder.pos_embed_for(len(grid))[:, prefix:]  # (1, N, D)
    native = encoder.patch_embed.grid_size if len(grid) == 3 else encoder.patch_embed.grid_size_2d
    sincos = sincos_3d if len(grid) == 3 else sincos_2d
    if torch.allclose(stored[0], sincos(encoder.embed_dim, *native).to(stored), atol=1e-6):
        return sincos(encoder.embed_dim, *grid).to(stored).unsqueeze(0)
    table = stored.transpose(1, 2).reshape(1, encoder.embed_dim, *native)
    mode = "trilinear" if len(grid) == 3 else "bilinear"
    table = F.interpolate(table, size=grid, mode=mode, align_corners=False)
    return table.flatten(2).transpose(1, 2)


def _with_masks(
    x: torch.Tensor, masks: torch.Tensor | None, mask_token: torch.Tensor | None
) -> torch.Tensor:
    """Patch embeddings ``(B, N, D)`` with the rows where ``masks`` ``(B, N)`` is True replaced by
    ``mask_token`` ``(D,)`` or ``(1, D)`` (iBOT / DINOv2, before the position embedding)."""
    if masks is None:
        return x
    if mask_token is None:
        raise ValueError("masks need a mask_token")
    if masks.shape != x.shape[:2]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match the tokens {tuple(x.shape[:2])}")
    return torch.where(masks.unsqueeze(-1), mask_token.reshape(1, 1, -1).to(x.dtype), x)


def _vit3d_tokens_any_size(
    encoder: ViT3D,
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`tokens_any_size` for a :class:`~medfm.models.vit3d.ViT3D` (volumes, or 2D images
    for a unified one) at any size divisible by the patch size."""
    embed, dims = encoder.patch_embed, images.ndim - 2
    native = embed.img_size if dims == 3 else embed.img_size[1:]
    size = tuple(images.shape[2:])
    if dims not in (2, 3) or (dims == 2 and embed.proj_2d is None) or size == tuple(native):
        if masks is None:  # native size, or the encoder's own error
            return encoder.forward_features(images)
        x, grid = embed(images)  # (B, N, D)
        pos = encoder.pos_embed_for(len(grid))[:, encoder.num_prefix_tokens :]
    else:
        p = embed.patch_size[0]
        if any(s % p for s in size):
            raise ValueError(f"crop size {size} is not divisible by the patch size {p}")
        y = (embed.proj if dims == 3 else embed.proj_2d)(images)  # (B, D, *grid)
        grid = tuple(y.shape[2:])
        x, pos = y.flatten(2).transpose(1, 2), _vit3d_pos_embed(encoder, grid)  # (B, N', D)
    x = _with_masks(x, masks, mask_token) + pos
    if encoder.cls_token is not None:
        cls = encoder.cls_token + encoder.pos_embed_for(dims)[:, :1]
        x = torch.cat([cls.expand(len(x), -1, -1), x], dim=1)
    return encoder.norm(encoder.blocks(encoder.norm_pre(x)))  # (B, prefix + N', D)


def tokens_any_size(
    encoder: Encoder,
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """The encoder's normed tokens ``(B, prefix + N', D)`` for images of any size divisible by the
    patch size; ``forward_features`` at the encoder's own size without masks.

    At another size (DINO's local crops) the position embedding is adapted to the new patch grid
    without changing the encoder:

    - a timm ViT's absolute embedding is resampled (bicubic, as DINO's
      ``interpolate_pos_encoding``);
    - a :class:`~medfm.models.vit3d.ViT3D` (``(B, C, D, H, W)``, or ``(B, C, H, W)`` when
      unified) has a fixed sin-cos table, which is simply recomputed for the crop's grid with
      :func:`~medfm.models.pos_embed.sincos_3d` (``sincos_2d`` in 2D): exact, and simpler than
      interpolating it. Only a table that is not sin-cos (learned weights loaded from MONAI) is
      interpolated, trilinearly.

    ``masks`` ``(B, N')`` (True = masked) replace those patch embeddings by ``mask_token`` before
    the position embedding is added, as iBOT and DINOv2 do (:class:`~medfm.ssl.dinov2.DINOv2`).
    """
    if isinstance(encoder, ViT3D):
        return _vit3d_tokens_any_size(encoder, images, masks, mask_token)
    size = tuple(images.shape[-2:])
    native = size == tuple(encoder.patch_embed.img_size)
    if native and masks is None:
        return encoder.forward_features(images)
    patch = encoder.patch_embed.patch_size
    if size[0] % patch[0] or size[1] % patch[1]:
        raise ValueError(f"crop size {size} is not divisible by the patch size {patch}")
    embed = encoder.patch_embed
    x = embed.norm(embed.proj(images).flatten(2).transpose(1, 2))  # (B, N', D)
    x = _with_masks(x, masks, mask_token)
    prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
    pos = resample_abs_pos_embed(
        encoder.pos_embed,
        new_size=[size[0] // patch[0], size[1] // patch[1]],
        old_size=list(embed.grid_size),
        num_prefix_tokens=prefix,
    )
    tokens = [
        t.expand(len(x), -1, -1) for t in (encoder.cls_token, encoder.reg_token) if t is not None
    ]
    if encoder.no_embed_class:
        x = torch.cat([*tokens, x + pos], dim=1)
    else:
        x = torch.cat([*tokens, x], dim=1) + pos
    x = encoder.norm_pre(encoder.patch_drop(encoder.pos_drop(x)))
    return encoder.norm(encoder.blocks(x))  # (B, prefix + N', D)


def encode_any_size(encoder: Encoder, images: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """:func:`medfm.models.backbones.encode` for images of any size divisible by the patch size:
    :func:`tokens_any_size` pooled (at the encoder's own size this *is* ``encode``)."""
    return _pool(encoder, tokens_any_size(encoder, images), pooling)


class DINONetwork(nn.Module):
    """Encoder + DINO head: ``(B, C, H, W)`` (or ``(B, C, D, H, W)`` for a ViT3D) at any multiple
    of the patch size -> ``(B, K)``."""

    def __init__(self, encoder: Encoder, head: DINOHead, pooling: str = "mean"):
        super().__init__()
        self.encoder, self.head, self.pooling = encoder, head, pooling

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Crops ``(B, C, [D,] H, W)`` -> head logits ``(B, K)`` (DINO, Caron et al. 2021)."""
        return self.head(encode_any_size(self.encoder, images, self.pooling))


class DINO(nn.Module):
    """DINO objective. ``forward({"image": (B, C, H, W) or (B, C, D, H, W)})`` -> ``{"loss",
    "loss_dino", "teacher_entropy", "ema_momentum"}``; call :meth:`on_step_end` after each
    optimiser step.

    Args:
        encoder: the student's timm ViT or medfm ViT3D (the teacher is a deep copy made here).
        out_dim, hidden_dim, bottleneck_dim: :class:`~medfm.ssl.heads.DINOHead` sizes.
        n_local: local crops per sample (ignored when ``views`` is given).
        teacher_temp, student_temp, center_momentum: :class:`~medfm.ssl.losses.DINOLoss`.
        momentum: EMA momentum at step 0; it rises along a cosine to ``momentum_final`` at
            ``momentum_steps`` (constant when ``momentum_steps`` is None).
        views: a callable ``images -> [global, global, local, ...]``; default
            ``MultiCrop(encoder size, half of it, n_local)``. A ``batch["sample_seed"]`` (the
            engine's per-image seeds) goes to it when it takes ``sample_seeds``
            (:func:`~medfm.ssl.views.call_views`), so every crop of a sample is drawn from that
            sample's seed and does not depend on the batch's split over processes or workers.
        pooling: ``"mean"`` of patch tokens or ``"cls"``.
    """

    def __init__(
        self,
        encoder: Encoder,
        out_dim: int = 1024,
        n_local: int = 4,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        views=None,
        momentum_final: float = 1.0,
        momentum_steps: int | None = None,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        size = tuple(encoder.patch_embed.img_size)
        self.views = views or MultiCrop(size, tuple(s // 2 for s in size), n_local)
        head = DINOHead(encoder.embed_dim, out_dim, hidden_dim, bottleneck_dim)
        self.student = DINONetwork(encoder, head, pooling)
        self.teacher = EMATeacher(self.student)
        self.criterion = DINOLoss(out_dim, student_temp, teacher_temp, center_momentum)
        self.momentum, self.momentum_final = momentum, momentum_final
        self.momentum_steps = momentum_steps
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    @property
    def encoder(self) -> Encoder:
        """The student backbone, the encoder that is saved."""
        return self.student.encoder

    def current_momentum(self) -> float:
        """The teacher's EMA momentum at the current step (cosine schedule to 1)."""
        return cosine_momentum(
            int(self.ema_steps), self.momentum_steps, self.momentum, self.momentum_final
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, [D,] H, W)}`` -> 0-dim ``{"loss", "loss_dino", "teacher_entropy",
        "ema_momentum"}`` (DINO, Caron et al. 2021)."""
        crops = call_views(self.views, batch["image"], batch.get("sample_seed"))
        n_global = 2
        global_crops = torch.cat(crops[:n_global])  # (2B, C, [D,] H, W)
        teacher_out = self.teacher(global_crops).chunk(n_global)  # 2 x (B, K)
        student_out = list(self.student(global_crops).chunk(n_global))
        if len(crops) > n_global:
            local_out = self.student(torch.cat(crops[n_global:]))  # (n_local * B, K)
            student_out += list(local_out.chunk(len(crops) - n_global))
        loss = self.criterion(student_out, teacher_out)
        q = torch.softmax(
            (torch.cat(teacher_out) - self.criterion.center) / self.criterion.teacher_temp, dim=-1
        )
        entropy = -(q * q.clamp_min(1e-12).log()).sum(dim=-1).mean()
        if self.training:
            self.criterion.update_center(teacher_out)
        return {
            "loss": loss,
            "loss_dino": loss.detach(),
            "teacher_entropy": entropy.detach(),
            "ema_momentum": torch.tensor(self.current_momentum()),
        }

    @torch.no_grad()
    def on_step_end(self) -> None:
        """Move the teacher towards the student; call after ``optimizer.step()``."""
        self.teacher.update(self.student, self.current_momentum())
        self.ema_steps += 1
