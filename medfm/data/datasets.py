"""Manifest rows -> MONAI datasets of sample dicts.

Each sample has ``image``, ``label``, ``center``, ``patient``, ``id`` and ``split``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.data import CacheDataset, Dataset
from omegaconf import DictConfig

from medfm.data.transforms import image_transforms

SAMPLE_KEYS = ("image", "label", "center", "patient", "id", "split")


def rows_for_split(rows: Sequence[dict], split: str | None) -> list[dict]:
    """Rows of one split (all rows when ``split`` is None)."""
    return [r for r in rows if split is None or r.get("split") == split]


def build_dataset(rows: Sequence[dict], data_cfg: DictConfig, progress: bool = False) -> Dataset:
    """A MONAI ``Dataset`` (``data.cache=none``) or ``CacheDataset`` (``memory``) of rows."""
    items = [{k: r.get(k, "") for k in SAMPLE_KEYS} | {"image": r["path"]} for r in rows]
    transform = image_transforms(data_cfg)
    if data_cfg.cache == "none":
        return Dataset(items, transform)
    if data_cfg.cache != "memory":
        raise ValueError(f"data.cache={data_cfg.cache!r}: use 'none' or 'memory'")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
        return CacheDataset(items, transform, progress=progress, num_workers=0)


def stack_images(dataset: Dataset, indices: Sequence[int]) -> torch.Tensor:
    """``(B, C, H, W)`` batch of the images at ``indices``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
        return torch.stack([torch.as_tensor(dataset[int(i)]["image"]) for i in indices])
