"""Geometry: the middle 2D slice of a volume, in array and dict (``...d``) form (the
``center_slice`` step of :mod:`medfm.data.transforms.preprocess`).

Resampling, orientation and resizing are MONAI's, used as the ``orientation``, ``spacing`` and
``resize`` steps of :mod:`medfm.data.transforms.preprocess`. Slicing is ours: MONAI has no
transform that turns a volume into one of its 2D slices.

Axis convention: images are channel-first, ``(C, X, Y, Z)`` for volumes as MONAI's readers give
them (``(C, D, H, W)`` in torch's words). ``axis`` arguments count spatial axes only: ``0`` is X,
``-1`` (the default) is the last spatial axis, Z, so axial slices of an RAS volume.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform


def _spatial_dim(img: NdarrayOrTensor, axis: int) -> int:
    """Array dimension of spatial ``axis`` in a channel-first volume ``(C, X, Y, Z)``."""
    if img.ndim != 4:
        raise ValueError(f"expected a channel-first volume (C, X, Y, Z), got shape {img.shape}")
    if not -3 <= axis <= 2:
        raise ValueError(f"axis must be a spatial axis in -3..2, got {axis}")
    return 1 + axis % 3


def take_slice(img: NdarrayOrTensor, axis: int, index: int) -> NdarrayOrTensor:
    """Slice ``index`` of ``(C, X, Y, Z)`` along spatial ``axis``: a ``(C, ...)`` 2D image.

    The affine of a ``MetaTensor`` does not carry over to 2D, so a plain tensor comes back.
    """
    dim = _spatial_dim(img, axis)
    if isinstance(img, MetaTensor):
        img = img.as_tensor()
    if isinstance(img, torch.Tensor):
        return img.select(dim, index).clone()
    return np.take(np.asarray(img), index, axis=dim)


class CenterSlice(Transform):
    """The middle 2D slice (index ``size // 2``) of a ``(C, X, Y, Z)`` volume along ``axis``."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        dim = _spatial_dim(img, self.axis)
        return take_slice(img, self.axis, img.shape[dim] // 2)


class CenterSliced(MapTransform):
    """Dict form of :class:`CenterSlice`: the middle slice of every key's volume."""

    def __init__(self, keys: KeysCollection, axis: int = -1) -> None:
        MapTransform.__init__(self, keys)
        self.slicer = CenterSlice(axis)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.slicer(d[key])
        return d
