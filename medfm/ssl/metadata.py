"""Contrastive learning with continuous metadata (Dufumier et al. 2021, "Contrastive Learning
with Continuous Proxy Meta-Data for 3D MRI Classification"): SimCLR whose positives are weighted
by how close two samples' metadata (e.g. age) are. Several descriptors at once (AnatCL):
:mod:`medfm.ssl.anatcl`."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from medfm.models.vit3d import ViT3D
from medfm.ssl.losses import metadata_weighted_info_nce
from medfm.ssl.simclr import SimCLR


class MetadataContrastive(SimCLR):
    """``forward({"image": (B, C, [D,] H, W), meta_key: (B,) float})`` -> ``{"loss",
    "loss_contrastive"}`` with :func:`~medfm.ssl.losses.metadata_weighted_info_nce`.

    ``sigma`` is in the metadata's units (e.g. years); standardise the metadata first to use
    ``sigma`` in standard deviations. Other arguments as :class:`~medfm.ssl.simclr.SimCLR`;
    with ``gather_distributed`` the keys and their metadata are gathered from every rank. As in
    SimCLR, the views are drawn from ``batch["sample_seed"]`` when the batch has it.
    """

    def __init__(
        self,
        encoder: VisionTransformer | ViT3D,
        proj_dim: int = 128,
        temperature: float = 0.2,
        sigma: float = 1.0,
        meta_key: str = "meta",
        views=None,
        hidden_dim: int = 512,
        pooling: str = "mean",
        gather_distributed: bool = True,
    ) -> None:
        super().__init__(
            encoder, proj_dim, temperature, views, hidden_dim, pooling, gather_distributed
        )
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma, self.meta_key = sigma, meta_key

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, [D,] H, W), meta_key: (B,)}`` -> 0-dim ``{"loss",
        "loss_contrastive"}`` (y-aware InfoNCE, Dufumier et al. 2021)."""
        if self.meta_key not in batch:
            raise KeyError(
                f"the metadata objective needs batch[{self.meta_key!r}], a (B,) float tensor "
                f"(e.g. age); the batch has {sorted(batch)}. Supply it from the dataset, or set "
                "ssl.meta_key to the key that holds it."
            )
        meta = torch.as_tensor(batch[self.meta_key], dtype=torch.float32)
        z1, z2 = self.embed_views(batch["image"], batch.get("sample_seed"))
        loss = metadata_weighted_info_nce(z1, z2, meta, self.temperature, self.sigma, self.gathers)
        return {"loss": loss, "loss_contrastive": loss.detach()}
