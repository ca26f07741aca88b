"""Patches: random crops for pre-training, the centre patch for embedding a whole image.

``data.patch: {size: [D, H, W], samples_per_volume: N}`` replaces the whole-image resize with
``N`` random crops of ``size`` per image and step (axes in the model's order, ``(D, H, W)`` for
volumes, ``(H, W)`` for 2D). An image smaller than the patch along an axis is padded there with
its minimum value (the background after windowing or normalisation), never skipped. Crop offsets
come from ``numpy.random.default_rng([seed, j])`` with the sample's seed, so they depend on
(seed, step, position) only, not on the DataLoader worker that makes them.

Downstream, an image is embedded by its centre patch (:class:`CenterPatchd`): the documented
rule for evaluating a patch-trained 3D encoder on whole volumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform
from omegaconf import DictConfig


def patch_size(data_cfg: DictConfig) -> tuple[int, ...] | None:
    """``data.patch.size`` as a tuple, or None (whole images)."""
    patch = data_cfg.get("patch") or {}
    size = patch.get("size")
    return None if size is None else tuple(int(s) for s in size)


def samples_per_volume(data_cfg: DictConfig) -> int:
    """``data.patch.samples_per_volume``: random patches drawn per image and step (1 without
    patches)."""
    patch = data_cfg.get("patch") or {}
    return int(patch.get("samples_per_volume") or 1) if patch.get("size") is not None else 1


def _check_dims(image: torch.Tensor, size: Sequence[int], name: str) -> None:
    if image.ndim - 1 != len(size):
        kind = {3: "2D", 4: "3D"}.get(image.ndim, f"{image.ndim - 1}-axis")
        raise ValueError(
            f"image {name} is {kind} {tuple(image.shape[1:])} but data.patch.size={list(size)} "
            f"has {len(size)} axes; use a recipe of the image's dimensionality"
        )


def pad_to(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``image (C, *spatial)`` padded symmetrically with its minimum to at least ``size``."""
    short = [max(0, s - d) for s, d in zip(size, image.shape[1:], strict=True)]
    if not any(short):
        return image
    pad = [p for s in reversed(short) for p in (s // 2, s - s // 2)]
    value = float(image.min()) if image.numel() else 0.0
    return torch.nn.functional.pad(image, pad, value=value)


def _crop(image: torch.Tensor, starts: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    return image[(slice(None), *(slice(a, a + s) for a, s in zip(starts, size, strict=True)))]


def center_patch(image: torch.Tensor, size: Sequence[int], name: str = "") -> torch.Tensor:
    """The centre ``size`` patch of ``image (C, *spatial)``, padded where it is smaller."""
    _check_dims(image, size, name)
    image = pad_to(image, size)
    return _crop(image, [(d - s) // 2 for d, s in zip(image.shape[1:], size, strict=True)], size)


def random_patches(
    image: torch.Tensor, size: Sequence[int], n: int, seed: int, name: str = ""
) -> torch.Tensor:
    """``(n, C, *size)`` crops of ``image (C, *spatial)`` at offsets drawn from ``seed``."""
    _check_dims(image, size, name)
    image = pad_to(image, size)
    out = []
    for j in range(n):
        rng = np.random.default_rng([int(seed), j])
        starts = [
            int(rng.integers(0, d - s + 1)) for d, s in zip(image.shape[1:], size, strict=True)
        ]
        out.append(_crop(image, starts, size))
    return torch.stack(out)


def patch_seeds(seed: int, n: int) -> np.ndarray:
    """Per-patch seeds for masking and views: the sample's own seed when ``n == 1``."""
    if n == 1:
        return np.array([seed], dtype=np.int64)
    return np.random.default_rng([int(seed), 11]).integers(0, 2**62, size=n)


class CenterPatchd(MapTransform):
    """Dict form of :func:`center_patch` (names the sample by its pseudonymous ``id``)."""

    def __init__(self, keys: str, size: Sequence[int]) -> None:
        super().__init__(keys)
        self.size = tuple(int(s) for s in size)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = center_patch(d[key], self.size, str(d.get("id", "")))
        return d
