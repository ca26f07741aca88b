"""Dict transforms that turn a manifest row into a model-ready sample (MONAI, channel-first)."""

from __future__ import annotations

import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    Resize,
    ScaleIntensityRanged,
)
from omegaconf import DictConfig

from medfm.data import readers  # noqa: F401  (silences MONAI's nvImageCodec notices)
from medfm.data.loading import LoadManifestImaged


class MatchChannelsd(MapTransform):
    """Make ``image`` have ``channels`` channels: average RGB to grey, or repeat grey to RGB."""

    def __init__(self, keys: str | list[str], channels: int) -> None:
        super().__init__(keys)
        self.channels = channels

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] == self.channels:
                continue
            if self.channels == 1:
                d[key] = img[:3].mean(dim=0, keepdim=True)
            elif img.shape[0] == 1:
                d[key] = img.repeat(self.channels, *([1] * (img.ndim - 1)))
            else:
                raise ValueError(f"cannot map {img.shape[0]} channels to {self.channels}")
        return d


class ResizeToConfigd(MapTransform):
    """Resize 2D images to ``(size, size)`` and 3D volumes to ``(depth, size, size)``.

    Volumes load as ``(C, X, Y, Z)``; the slice axis Z is moved first so that 3D backbones see
    ``(C, D, H, W)`` with D along the slices. Uses MONAI ``Resize`` with ``area`` interpolation
    (no zero-padded anti-aliasing blur, which darkens borders).
    """

    def __init__(self, keys: str | list[str], size: int, depth: int | None = None) -> None:
        super().__init__(keys)
        self.size, self.depth = size, depth

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim == 4:  # (C, X, Y, Z) -> (C, Z, X, Y)
                img = img.permute(0, 3, 1, 2)
                shape = (self.depth or self.size, self.size, self.size)
            else:
                shape = (self.size, self.size)
            d[key] = Resize(shape, mode="area")(img)
        return d


def image_transforms(data_cfg: DictConfig) -> Compose:
    """Load (see :mod:`medfm.data.loading`), channel-first, scale to [0, 1], resize (2D or
    3D), float32."""
    size = int(data_cfg.image_size)
    return Compose(
        [
            LoadManifestImaged("image"),
            MatchChannelsd("image", int(data_cfg.channels)),
            ScaleIntensityRanged(
                "image",
                a_min=float(data_cfg.intensity_min),
                a_max=float(data_cfg.intensity_max),
                b_min=0.0,
                b_max=1.0,
                clip=True,
            ),
            ResizeToConfigd("image", size, data_cfg.get("depth_size")),
            EnsureTyped("image", dtype=torch.float32, track_meta=False),
        ]
    )
