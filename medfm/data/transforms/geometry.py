"""Geometry: 2D slices of volumes, in array and dict (``...d``) form.

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
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Transform


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


class RandSliceSample(RandomizableTransform):
    """A random 2D slice of a ``(C, X, Y, Z)`` volume along spatial ``axis``.

    With probability ``prob`` the slice index is drawn uniformly, otherwise the middle slice is
    taken (the output must be 2D either way). The last index drawn is kept in ``self.index``.

    Shapes: ``(C, X, Y, Z)`` -> ``(C, X, Y)`` for ``axis=-1``.
    """

    def __init__(self, axis: int = -1, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        self.axis = axis
        self.index = 0

    def randomize(self, size: int) -> None:
        """Draw which slice (or slab) the next call takes."""
        super().randomize(None)
        self.index = int(self.R.randint(size)) if self._do_transform else size // 2

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize(img.shape[_spatial_dim(img, self.axis)])
        return take_slice(img, self.axis, self.index)


class RandSliceSampled(Randomizable, MapTransform):
    """Dict form of :class:`RandSliceSample`: the same slice index for every key."""

    def __init__(
        self,
        keys: KeysCollection,
        axis: int = -1,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.sampler = RandSliceSample(axis, prob)

    def randomize(self, size: int) -> None:
        """Draw the slice shared by every key of the next call."""
        self.sampler.randomize(size)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSliceSampled:
        """Seed this transform and its array form alike."""
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        self.randomize(d[first].shape[_spatial_dim(d[first], self.sampler.axis)])
        for key in self.key_iterator(d):
            d[key] = self.sampler(d[key], randomize=False)
        return d
