"""Geometry preprocessing: resample to a voxel spacing in RAS, 2D slices of volumes, fixed sizes.

Resampling, orientation, padding and resizing are MONAI's (``Orientationd``, ``Spacingd``,
``Resized``, ``ResizeWithPadOrCropd``); this module chooses their settings and composes them.
Slicing is ours: MONAI has no transform that turns a volume into one of its 2D slices.

Axis convention: images are channel-first, ``(C, X, Y, Z)`` for volumes as MONAI's readers give
them (``(C, D, H, W)`` in torch's words). ``axis`` arguments count spatial axes only: ``0`` is X,
``-1`` (the default) is the last spatial axis, Z, so axial slices of an RAS volume.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    Orientationd,
    Randomizable,
    RandomizableTransform,
    Resized,
    ResizeWithPadOrCropd,
    Spacingd,
    Transform,
)


def resample_to_spacing_ras(
    keys: KeysCollection,
    pixdim: Sequence[float] | float,
    mode: str | Sequence[str] = "bilinear",
) -> Compose:
    """Reorient to RAS, then resample to voxel spacing ``pixdim`` (mm), for ``MetaTensor`` keys.

    ``Orientationd(axcodes="RAS")`` runs first so that ``pixdim`` is given in R, A, S order. The
    field of view is kept (``Spacingd(scale_extent=True, align_corners=True)``): the outer voxel
    edges stay in place, so going from 2 mm to 1 mm doubles the number of voxels along each axis.
    Use ``mode="nearest"`` for label keys, e.g. ``mode=("bilinear", "nearest")`` for
    ``keys=("image", "label")``; ``"bilinear"`` is trilinear on volumes.
    """
    return Compose(
        [
            Orientationd(keys, axcodes="RAS", labels=None),
            Spacingd(keys, pixdim=pixdim, mode=mode, scale_extent=True, align_corners=True),
        ]
    )


def crop_pad_resize(
    keys: KeysCollection,
    spatial_size: Sequence[int],
    mode: str | Sequence[str] = "area",
) -> Compose:
    """Bring images to ``spatial_size`` without distorting them: resize, then pad or crop.

    The longest side is resized to ``max(spatial_size)`` keeping the aspect ratio
    (``Resized(size_mode="longest")``), then ``ResizeWithPadOrCropd`` pads with zeros (or
    centre-crops) to ``spatial_size``; run it after intensity scaling so that zero is background.

    ``mode="area"`` (the default) averages the input pixels each output pixel covers: when
    shrinking, the usual case for foundation-model inputs, that is anti-aliased and keeps a
    constant image constant up to its border. MONAI's ``anti_aliasing=True`` is not used because
    its Gaussian pre-filter pads with zeros and darkens the image border (by 8 % along the edges
    for a 2x shrink). When enlarging, ``"area"`` repeats pixels; pass ``"bilinear"`` (2D) or
    ``"trilinear"`` (3D) instead. Give one mode per key for labels, e.g. ``("area", "nearest")``.
    """
    spatial_size = tuple(int(s) for s in spatial_size)
    if len(spatial_size) not in (2, 3):
        raise ValueError(f"spatial_size must have 2 or 3 entries, got {spatial_size}")
    return Compose(
        [
            Resized(keys, spatial_size=max(spatial_size), size_mode="longest", mode=mode),
            ResizeWithPadOrCropd(keys, spatial_size=spatial_size),
        ]
    )


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


class CenterSliced(MapTransform):
    """Dict form of :class:`CenterSlice`."""

    def __init__(
        self, keys: KeysCollection, axis: int = -1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slicer = CenterSlice(axis)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.slicer(d[key])
        return d


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
