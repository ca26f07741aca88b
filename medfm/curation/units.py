"""The units that curation compares: the slices of each 3D volume, or each 2D image or tile.

Wolf et al. 2024 ("Less is More") reduce the axial slices of each CT volume before 2D
contrastive pre-training; medfm takes a manifest row and gives its units after the recipe's
deterministic preprocessing (``data.preprocess`` of ``--config``: orientation, spacing, HU
window, foreground crop, ...), without the whole-image resizes (``resize``, ``resize_to_model``),
which would squeeze the slice axis. Without a recipe (``data.preprocess: null``) no step runs:
the units keep the file's own intensities (HU for CT), which the classic 0-255 rescale would
clip. Volumes come slices first, ``(C, D, H, W)`` (:class:`SlicesFirstd`), so a unit is one
``(C, H, W)`` slice along D, the last stored axis (axial for RAS).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped
from omegaconf import DictConfig

from medfm.data.sources.loading import LoadManifestImaged
from medfm.data.transforms.preprocess import KEY, SlicesFirstd, build_step, resolve_preprocess

WHOLE_IMAGE_RESIZES = frozenset({"resize", "resize_to_model"})


@dataclasses.dataclass
class Units:
    """One manifest row's units: ``images`` is ``(N, C, H, W)`` float32 (``N`` slices of a
    volume, or 1 for a 2D image); ``volume`` says whether they are slices."""

    row: dict
    images: np.ndarray
    volume: bool


def unit_steps(data_cfg: DictConfig) -> list[dict]:
    """The preprocessing steps curation applies: the recipe's, less whole-image resizes;
    none for ``data.preprocess: null``."""
    if data_cfg.get("preprocess") is None:
        return []
    return [s for s in resolve_preprocess(data_cfg) if s["name"] not in WHOLE_IMAGE_RESIZES]


def unit_transforms(data_cfg: DictConfig) -> Compose:
    """Load a manifest row's image and run :func:`unit_steps` on it, slices first."""
    steps = [build_step(i, step) for i, step in enumerate(unit_steps(data_cfg))]
    return Compose(
        [
            LoadManifestImaged(KEY),
            *steps,
            SlicesFirstd(KEY),
            EnsureTyped(KEY, dtype=torch.float32, track_meta=False),
        ]
    )


def row_units(row: dict, transform: Compose) -> Units:
    """The units of one row; raises what loading raises (the caller quarantines the row)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
        image = torch.as_tensor(transform({KEY: row["path"]})[KEY]).numpy()
    if image.ndim == 4:  # (C, D, H, W): one unit per slice along D
        return Units(row, np.ascontiguousarray(image.transpose(1, 0, 2, 3)), True)
    if image.ndim == 3:
        return Units(row, image[None], False)
    raise ValueError(f"expected a 2D image or a volume, got an array of shape {image.shape}")


def iter_units(rows: Sequence[dict], data_cfg: DictConfig) -> Iterator[Units | Exception]:
    """:func:`row_units` of every row in order; a row that cannot be read gives its error."""
    transform = unit_transforms(data_cfg)
    for row in rows:
        try:
            yield row_units(row, transform)
        except Exception as err:  # a corrupt or vanished file: quarantined, the run goes on
            yield err


def grey(unit: np.ndarray) -> np.ndarray:
    """One ``(H, W)`` float image of a ``(C, H, W)`` unit: RGB by ITU-R 601 luma weights (as
    PIL's ``convert("L")``, which imagehash applies), other channel counts by their mean."""
    if unit.shape[0] == 3:
        return np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), unit, axes=1)
    return unit.mean(axis=0)
