"""Manifest rows -> MONAI datasets of sample dicts.

Each sample has ``image``, ``label``, ``center``, ``patient``, ``id`` and ``split``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from omegaconf import DictConfig

from medfm.data.transforms.compose import image_transforms

SAMPLE_KEYS = ("image", "label", "center", "patient", "id", "split")
log = logging.getLogger(__name__)


def rows_for_split(rows: Sequence[dict], split: str | None) -> list[dict]:
    """Rows of one split (all rows when ``split`` is None)."""
    return [r for r in rows if split is None or r.get("split") == split]


class SafePersistentDataset(PersistentDataset):
    """MONAI ``PersistentDataset`` that also rebuilds truncated or unreadable cache files.

    MONAI recomputes an entry only for some corruptions (bad pickle, bad magic number); a file cut
    short by a crash raises a different error. Cache file names are hashes of the sample dict,
    which holds only paths and pseudonyms.
    """

    def _hashfile(self, item) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.hash_func(item).decode('utf-8')}{self.transform_hash}.pt"

    def _cachecheck(self, item_transformed):
        try:
            return super()._cachecheck(item_transformed)
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            hashfile = self._hashfile(item_transformed)
            if hashfile is None or not hashfile.is_file():
                raise
            warnings.warn(
                f"Corrupt cache file {hashfile} ({type(err).__name__}); rebuilding it", stacklevel=2
            )
            hashfile.unlink()
            return super()._cachecheck(item_transformed)


CACHE_MODES = ("none", "memory", "persistent", "auto")


def _items(rows: Sequence[dict]) -> list[dict]:
    return [{k: r.get(k, "") for k in SAMPLE_KEYS} | {"image": r["path"]} for r in rows]


def cache_mode(items: list[dict], transform, data_cfg: DictConfig) -> str:
    """``data.cache`` with ``auto`` decided: ``memory`` while ``len(items)`` images the size of
    the first (after preprocessing) fit ``data.cache_budget_gb``, else ``persistent`` when
    ``data.cache_dir`` is set, else ``none``."""
    mode = str(data_cfg.cache)
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache={mode!r}: use one of {', '.join(CACHE_MODES)}")
    if mode != "auto" or not items:
        return mode
    first = torch.as_tensor(transform(items[0])["image"])
    need = first.numel() * first.element_size() * len(items) / 2**30
    if need <= float(data_cfg.get("cache_budget_gb") or 0.0):
        return "memory"
    chosen = "persistent" if data_cfg.get("cache_dir") else "none"
    log.info(
        "data.cache=auto: %d images need about %.2f GB, over data.cache_budget_gb=%s; using %s",
        len(items),
        need,
        data_cfg.get("cache_budget_gb"),
        chosen,
    )
    return chosen


def build_dataset(
    rows: Sequence[dict], data_cfg: DictConfig, progress: bool = False, whole_image: bool = True
) -> Dataset:
    """MONAI ``Dataset`` (``data.cache=none``), ``CacheDataset`` (``memory``), a persistent
    on-disk cache in ``data.cache_dir`` (``persistent``), or the one of these that fits
    ``data.cache_budget_gb`` (``auto``), over manifest rows. Only the deterministic part of
    preprocessing is cached; ``whole_image=False`` leaves patch sampling to the caller."""
    items = _items(rows)
    transform = image_transforms(data_cfg, whole_image=whole_image)
    mode = cache_mode(items, transform, data_cfg)
    if mode == "none":
        return Dataset(items, transform)
    if mode == "persistent":
        if not data_cfg.get("cache_dir"):
            raise ValueError("data.cache=persistent needs data.cache_dir=<folder>")
        return SafePersistentDataset(items, transform, cache_dir=data_cfg.cache_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
        return CacheDataset(items, transform, progress=progress, num_workers=0)


def load_image(dataset: Dataset, i: int) -> torch.Tensor:
    """The ``image`` of sample ``i``, a tensor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
        return torch.as_tensor(dataset[int(i)]["image"])


def stack_images(dataset: Dataset, indices: Sequence[int]) -> torch.Tensor:
    """``(B, C, H, W)`` batch of the images at ``indices``."""
    return torch.stack([load_image(dataset, i) for i in indices])
