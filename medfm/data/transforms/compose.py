"""Dict transforms that turn a manifest row into a model-ready sample (MONAI, channel-first)."""

from __future__ import annotations

import torch
from monai.transforms import Compose, EnsureTyped, MapTransform
from omegaconf import DictConfig

from medfm.data.sources import readers  # noqa: F401  (silences MONAI's nvImageCodec notices)
from medfm.data.sources.loading import LoadManifestImaged
from medfm.data.transforms.patches import CenterPatchd, patch_size
from medfm.data.transforms.preprocess import preprocess_transforms


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


def image_transforms(data_cfg: DictConfig, whole_image: bool = True) -> Compose:
    """Load (see :mod:`medfm.data.sources.loading`), the deterministic ``data.preprocess`` steps
    (see
    :mod:`medfm.data.transforms.preprocess`), ``data.channels`` channels, float32.

    With ``data.patch.size`` set, pre-training samples random patches from these images
    (:mod:`medfm.data.transforms.patches`); with ``whole_image`` (feature extraction, monitors)
    each image
    is instead embedded by its centre patch, padded with its minimum where it is smaller.
    """
    steps = [LoadManifestImaged("image"), *preprocess_transforms(data_cfg)]
    steps.append(MatchChannelsd("image", int(data_cfg.channels)))
    size = patch_size(data_cfg)
    if whole_image and size is not None:
        steps.append(CenterPatchd("image", size))
    steps.append(EnsureTyped("image", dtype=torch.float32, track_meta=False))
    return Compose(steps)
