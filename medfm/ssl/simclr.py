"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): two augmented views, pooled encoder features, an MLP projection, NT-Xent.
Works on 2D images with a timm ViT and on 3D volumes (and, unified, 2D images) with a medfm
:class:`~medfm.models.vit3d.ViT3D`."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medfm.models.backbones import encode
from medfm.models.vit3d import ViT3D
from medfm.ssl.heads import ProjectionHead
from medfm.ssl.losses import info_nce
from medfm.ssl.views import TwoViews, call_views


def default_views(encoder: VisionTransformer | ViT3D) -> TwoViews:
    """:class:`~medfm.ssl.views.TwoViews` at the encoder's input size (``(h, w)`` or
    ``(d, h, w)``), default augmentations."""
    return TwoViews(tuple(encoder.patch_embed.img_size))


class SimCLR(nn.Module):
    """``forward({"image": (B, C, H, W) or (B, C, D, H, W)})`` -> ``{"loss", "loss_contrastive"}``.

    Both views go through the encoder and the projector as one ``2B`` batch, so the projector's
    BatchNorm sees both. ``views`` is a callable ``images -> (view1, view2)`` whose views have the
    encoder's input size; default :func:`default_views`. A ``batch["sample_seed"]`` (one seed per
    image, as the engine's batches carry) goes to ``views`` when it takes ``sample_seeds``
    (:func:`~medfm.ssl.views.call_views`): each sample's views are then drawn from its own seed,
    so they do not depend on how the batch is split over processes or workers. Without it the
    default views draw their seeds from the global torch RNG.

    With ``gather_distributed`` (default) a training-mode forward under ``torch.distributed``
    takes its negatives from every rank's projections, all-gathered with gradients (lightly's
    ``gather_distributed``; :mod:`medfm.ssl.gather`), so N DDP processes at a global batch ``B``
    see the ``2B - 2`` negatives per anchor of one process at ``B``, as SimCLR's cross-replica
    negatives (Chen et al. 2020). The projector's BatchNorm statistics are still per process
    unless it is converted to SyncBatchNorm (``train.sync_batchnorm``, CUDA only). An eval-mode
    forward never communicates.
    """

    def __init__(
        self,
        encoder: VisionTransformer | ViT3D,
        proj_dim: int = 128,
        temperature: float = 0.2,
        views=None,
        hidden_dim: int = 512,
        pooling: str = "mean",
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views or default_views(encoder)
        self.projector = ProjectionHead(encoder.embed_dim, hidden_dim, proj_dim)
        self.temperature, self.pooling = temperature, pooling
        self.gather_distributed = gather_distributed

    @property
    def gathers(self) -> bool:
        """Whether this forward gathers negatives across ranks (training mode only)."""
        return self.gather_distributed and self.training

    def embed_views(
        self, images: torch.Tensor, sample_seeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of ``images`` -> projections ``z1, z2`` ``(B, proj_dim)``; the views of
        sample ``i`` are drawn from ``sample_seeds[i]`` (:mod:`medfm.ssl.views`)."""
        v1, v2 = call_views(self.views, images, sample_seeds)
        z = self.projector(encode(self.encoder, torch.cat([v1, v2]), self.pooling))  # (2B, P)
        z1, z2 = z.chunk(2)
        return z1, z2

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, [D,] H, W)}`` -> 0-dim ``{"loss", "loss_contrastive"}``, NT-Xent of
        two views (SimCLR, Chen et al. 2020)."""
        z1, z2 = self.embed_views(batch["image"], batch.get("sample_seed"))
        loss = info_nce(z1, z2, self.temperature, gather_distributed=self.gathers)
        return {"loss": loss, "loss_contrastive": loss.detach()}
