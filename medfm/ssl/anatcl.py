"""AnatCL: contrastive learning whose positives are weighted by a kernel over several continuous
descriptors of each image (Barbano, Brunello, Dufumier and Grangetto 2024, "Anatomical
Foundation Models for Brain MRIs", arXiv:2408.07079), e.g. age and regional grey-matter volume,
cortical thickness or surface area; each descriptor is one manifest column.

With the descriptors ``y_i`` ``(K,)`` of sample ``i`` (standardised, see below) and kernel width
``sigma`` (in standard deviations), the kernels (:func:`descriptor_kernels`) are:

- ``global``: one kernel on the whole vector,
  ``w[i, j] = exp(-mean_k (y_ik - y_jk)**2 / (2 sigma**2))``;
- ``local``: one kernel per descriptor, ``w_k[i, j] = exp(-(y_ik - y_jk)**2 / (2 sigma**2))``,
  one loss per descriptor, the losses averaged.

The loss is the y-aware InfoNCE of Dufumier et al. 2021 with that kernel
(:func:`~medfm.ssl.losses.kernel_weighted_info_nce`; with one descriptor both variants are
:class:`~medfm.ssl.metadata.MetadataContrastive`). The global kernel uses the *mean* squared
difference, so ``sigma`` means the same for one descriptor or many and for both variants.

Standardisation (``standardize``): ``"batch"`` z-scores each descriptor over the global batch
(all-gathered under DDP, so N processes see the statistics of one); ``"none"`` takes the values
as given: :func:`medfm.train.pretrain.pretrain` with ``ssl.anatcl_standardize=dataset`` z-scores
each column over the training rows before it reaches the batch, and the objective then gets
``"none"``.

Age as its own term (``age_key``, ``ssl.anatcl_age_key``): the first author's project page
describes AnatCL's objective as a weighted sum of the anatomical term and a y-Aware age term,
``L = L_anat + age_weight * L_age``; ``L_age`` is the same kernel-weighted InfoNCE with one
Gaussian kernel on the standardised age alone (:class:`~medfm.ssl.metadata.MetadataContrastive`'s
loss). Without ``age_key`` there is no separate term, and age may still be one of ``meta_keys``.

What differs from the paper:

- the paper computes its descriptors per brain region of an atlas (cortical thickness, grey-matter
  volume and surface area from FreeSurfer, 68 or 148 regions) and trains a 3D ResNet-18; here
  any numeric manifest columns serve, on medfm's ViTs;
- the paper's similarity between two scans' anatomical measures, its local aggregation over
  regions and its weights of the two terms (``lambda_1``, ``lambda_2``) could not be read here
  (only the paper's abstract and the author's summary were reachable): this module uses Gaussian
  kernels on standardised descriptors, averages the per-descriptor losses in ``local``, and fixes
  the anatomical term's weight at 1 (``age_weight`` is the ratio of the two).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from medfm.config import ConfigError
from medfm.models.vit3d import ViT3D
from medfm.ssl import gather as G
from medfm.ssl.losses import kernel_weighted_info_nce
from medfm.ssl.simclr import SimCLR

VARIANTS = ("global", "local")
STANDARDIZE = ("batch", "none")


def meta_keys_of(ssl_cfg: Mapping[str, Any]) -> list[str]:
    """``ssl.meta_keys``, or ``[ssl.meta_key]`` when it is null."""
    keys = ssl_cfg.get("meta_keys")
    if keys is None:
        return [str(ssl_cfg["meta_key"])]
    if isinstance(keys, str) or not list(keys):
        raise ConfigError(f"ssl.meta_keys={keys!r} must be a list of manifest columns, e.g. [age]")
    return [str(k) for k in keys]


def anatcl_kwargs(ssl_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`AnatCL` descriptor settings from the ``ssl`` config section; with
    ``ssl.anatcl_standardize=dataset`` the values come standardised (by ``pretrain``), so the
    objective takes them as they are."""
    variant, how = str(ssl_cfg["anatcl_variant"]), str(ssl_cfg["anatcl_standardize"])
    if variant not in VARIANTS or how not in ("dataset", *STANDARDIZE):
        raise ConfigError(
            f"ssl.anatcl_variant={variant!r} must be one of {VARIANTS} and "
            f"ssl.anatcl_standardize={how!r} one of ('dataset', 'batch', 'none')"
        )
    sigma = float(ssl_cfg["anatcl_sigma"])
    if sigma <= 0:
        raise ConfigError(f"ssl.anatcl_sigma={sigma} must be > 0")
    age_key, age_weight = ssl_cfg.get("anatcl_age_key"), float(ssl_cfg["anatcl_age_weight"])
    keys = meta_keys_of(ssl_cfg)
    if age_key is not None and (str(age_key) in keys or age_weight < 0):
        raise ConfigError(
            f"ssl.anatcl_age_key={age_key!r} must not be one of ssl.meta_keys={keys} (it is its "
            f"own y-Aware term), and ssl.anatcl_age_weight={age_weight} must be >= 0"
        )
    return {
        "meta_keys": keys,
        "variant": variant,
        "sigma": sigma,
        "standardize": "none" if how == "dataset" else how,
        "age_key": None if age_key is None else str(age_key),
        "age_weight": age_weight,
    }


def descriptor_columns(ssl_cfg: Mapping[str, Any]) -> list[str]:
    """Every manifest column AnatCL reads: ``ssl.meta_keys``, then ``ssl.anatcl_age_key``."""
    age_key = ssl_cfg.get("anatcl_age_key")
    return meta_keys_of(ssl_cfg) + ([] if age_key is None else [str(age_key)])


def standardize_columns(
    values: torch.Tensor, reference: torch.Tensor | None = None
) -> torch.Tensor:
    """``(n, K)`` values z-scored per column with the mean and (population) standard deviation of
    ``reference`` ``(m, K)`` (default ``values``); a constant column is only centred."""
    ref = values if reference is None else reference
    mean, std = ref.mean(dim=0), ref.std(dim=0, unbiased=False)
    return (values - mean) / torch.where(std > 0, std, torch.ones_like(std))


def descriptor_kernels(
    rows: torch.Tensor, cols: torch.Tensor, sigma: float, variant: str = "global"
) -> torch.Tensor:
    """Gaussian kernels between descriptor vectors: ``rows`` ``(b, K)`` x ``cols`` ``(B, K)`` ->
    ``(1, b, B)`` (``global``: on the mean squared difference over the ``K`` descriptors) or
    ``(K, b, B)`` (``local``: one per descriptor)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: use one of {VARIANTS}")
    squared = (rows[:, None, :] - cols[None, :, :]) ** 2  # (b, B, K)
    if variant == "global":
        return torch.exp(-squared.mean(dim=2) / (2 * sigma**2)).unsqueeze(0)
    return torch.exp(-squared / (2 * sigma**2)).permute(2, 0, 1)


class AnatCL(SimCLR):
    """``forward({"image": (B, C, [D,] H, W), key: (B,) for key in meta_keys (and age_key)})``
    -> ``{"loss", "loss_contrastive"}`` (and ``"loss_age"`` with ``age_key``).

    Args:
        encoder: the timm ViT or medfm ViT3D to train.
        meta_keys: the batch keys (manifest columns) of the descriptors, at least one.
        variant: ``"global"`` or ``"local"`` (see the module docstring).
        sigma: kernel width > 0, in standard deviations of the standardised descriptors.
        standardize: ``"batch"`` or ``"none"`` (values already standardised over the dataset).
        age_key: the batch key of age for the separate y-Aware term, or ``None`` for none.
        age_weight: that term's weight (the anatomical term's is 1).
        Other arguments as :class:`~medfm.ssl.simclr.SimCLR`; with ``gather_distributed`` the
        keys and their descriptors are gathered from every rank, views from the sample seeds.
    """

    def __init__(
        self,
        encoder: VisionTransformer | ViT3D,
        meta_keys: Sequence[str],
        variant: str = "global",
        sigma: float = 1.0,
        standardize: str = "batch",
        proj_dim: int = 128,
        temperature: float = 0.2,
        views=None,
        hidden_dim: int = 512,
        pooling: str = "mean",
        gather_distributed: bool = True,
        age_key: str | None = None,
        age_weight: float = 1.0,
    ) -> None:
        super().__init__(
            encoder, proj_dim, temperature, views, hidden_dim, pooling, gather_distributed
        )
        keys = [str(k) for k in meta_keys]
        if not keys:
            raise ValueError("meta_keys must name at least one descriptor")
        if variant not in VARIANTS or standardize not in STANDARDIZE:
            raise ValueError(
                f"variant={variant!r}, standardize={standardize!r}: use one of {VARIANTS} and "
                f"one of {STANDARDIZE}"
            )
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if age_key is not None and (age_key in keys or age_weight < 0):
            raise ValueError(f"age_key={age_key!r} must not be in meta_keys={keys}, weight >= 0")
        self.meta_keys, self.variant, self.sigma, self.standardize = (
            keys,
            variant,
            sigma,
            standardize,
        )
        self.age_key, self.age_weight = age_key, float(age_weight)

    @property
    def columns(self) -> list[str]:
        """The batch keys read: ``meta_keys``, then ``age_key`` if set."""
        return self.meta_keys + ([] if self.age_key is None else [self.age_key])

    def descriptors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's ``(b, K)`` float32 descriptors, in :attr:`columns` order."""
        missing = [k for k in self.columns if k not in batch]
        if missing:
            raise KeyError(
                f"the anatcl objective needs batch[{missing[0]!r}], a (B,) float tensor per "
                f"descriptor in ssl.meta_keys={self.meta_keys} (and ssl.anatcl_age_key="
                f"{self.age_key!r}); the batch has {sorted(batch)}. "
                "Keep the column in the manifest (`medfm ingest --labels CSV --label-columns "
                f"{missing[0]}`) or change ssl.meta_keys."
            )
        columns = [torch.as_tensor(batch[k], dtype=torch.float32).reshape(-1) for k in self.columns]
        return torch.stack(columns, dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, [D,] H, W), key: (B,), ...}`` -> 0-dim ``{"loss",
        "loss_contrastive"[, "loss_age"]}`` (AnatCL, Barbano et al. 2024)."""
        z1, z2 = self.embed_views(batch["image"], batch.get("sample_seed"))
        y = self.descriptors(batch).to(z1.device)  # (b, K)
        y_keys = G.gather_no_grad(y) if self.gathers else y  # (B, K)
        if self.standardize == "batch":
            y, y_keys = standardize_columns(y, y_keys), standardize_columns(y_keys)
        k = len(self.meta_keys)
        kernels = descriptor_kernels(y[:, :k], y_keys[:, :k], self.sigma, self.variant)
        loss = kernel_weighted_info_nce(z1, z2, kernels, self.temperature, self.gathers)
        out = {"loss_contrastive": loss.detach()}
        if self.age_key is not None:
            age_kernel = descriptor_kernels(y[:, k:], y_keys[:, k:], self.sigma)
            loss_age = kernel_weighted_info_nce(z1, z2, age_kernel, self.temperature, self.gathers)
            loss = loss + self.age_weight * loss_age
            out["loss_age"] = loss_age.detach()
        return {"loss": loss, **out}
