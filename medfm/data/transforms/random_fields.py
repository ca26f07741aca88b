"""Gaussian random field augmentations (Mansfield et al. 2023), for 2D and 3D images.

"Random Field Augmentations for Self-Supervised Representation Learning" (Mansfield, Afkanpour,
Morningstar and Singhal, arXiv:2311.03629, 2023; PMLR 228, 2024) replaces the global parameters
of affine and colour augmentations by Gaussian random fields: every pixel gets its own, smoothly
varying, parameters. Short length scales give local deformations and blotchy intensity changes;
long ones give back the global transforms.

Conventions: images are channel-first ``(C, *spatial)`` with 2 or 3 spatial axes, numpy or torch;
the output has the input's type. Length scales and shifts are in pixels (voxels assumed isotropic).
``strength`` scales every field; ``strength=0`` returns the input object itself.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple_rep

Rng = np.random.RandomState | np.random.Generator | int | None


def _transfer(n: int, sigma: float) -> np.ndarray:
    """Fourier transfer of a Gaussian kernel of std ``sigma`` pixels on a periodic grid of ``n``."""
    return np.exp(-2.0 * (math.pi * sigma * np.fft.fftfreq(n)) ** 2)


def gaussian_random_field(
    shape: Sequence[int], length_scale: float | Sequence[float], rng: Rng = None
) -> np.ndarray:
    """A smooth, stationary, zero-mean field with unit variance at every pixel.

    White noise filtered by a Gaussian kernel of std ``length_scale`` pixels (per axis if a
    sequence), done in Fourier space. The correlation between two pixels ``r`` apart is
    ``exp(-r**2 / (4 * length_scale**2))``. The field is drawn on a grid padded by up to
    ``3 * length_scale`` per axis and cropped, so opposite edges are not correlated through the
    periodic FFT. The variance is normalised exactly (not estimated from the draw), so a length
    scale much longer than the image gives a nearly constant field whose value is ``N(0, 1)``.

    Args:
        shape: spatial shape, any number of axes (2 or 3 here).
        length_scale: kernel std in pixels, > 0.
        rng: ``np.random.RandomState`` (MONAI's ``self.R``), ``np.random.Generator`` or a seed.

    Returns:
        float32 array of ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    scales = ensure_tuple_rep(length_scale, len(shape))
    if min(scales) <= 0:
        raise ValueError(f"length_scale must be positive, got {length_scale}")
    if not isinstance(rng, np.random.RandomState | np.random.Generator):
        rng = np.random.default_rng(rng)
    padded = [n + min(n, math.ceil(3 * s)) for n, s in zip(shape, scales, strict=True)]
    spectrum = np.fft.rfftn(rng.standard_normal(padded))
    variance = 1.0
    for axis, (n, s) in enumerate(zip(padded, scales, strict=True)):
        transfer = _transfer(n, s)
        variance *= float(np.mean(transfer**2))
        if axis == len(padded) - 1:
            transfer = transfer[: n // 2 + 1]
        spectrum *= transfer.reshape([-1 if a == axis else 1 for a in range(len(padded))])
    field = np.fft.irfftn(spectrum, s=padded) / math.sqrt(variance)
    return field[tuple(slice(0, n) for n in shape)].astype(np.float32)


def _rotate(q: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate vectors ``q`` ``(d, *S)`` by per-pixel angles: ``(1, *S)`` in 2D, ``(3, *S)`` in 3D.

    3D uses the rotation-vector (Rodrigues) form, written with ``sinc`` so zero angles are safe.
    """
    if q.shape[0] == 2:
        cos, sin = np.cos(angles[0]), np.sin(angles[0])
        return np.stack([cos * q[0] - sin * q[1], sin * q[0] + cos * q[1]])
    theta = np.linalg.norm(angles, axis=0)
    cross = np.cross(angles, q, axis=0)
    dot = (angles * q).sum(axis=0)
    return (
        np.cos(theta) * q
        + np.sinc(theta / math.pi) * cross
        + 0.5 * np.sinc(theta / (2 * math.pi)) ** 2 * dot * angles
    )


def _sampling_grid(displacement: np.ndarray) -> torch.Tensor:
    """Voxel displacement ``(d, *S)`` -> ``grid_sample`` grid ``(1, *S, d)``, align_corners=True."""
    shape = displacement.shape[1:]
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    position = index + displacement
    scale = np.array([2.0 / max(n - 1, 1) for n in shape]).reshape(-1, *[1] * len(shape))
    normalised = position * scale - 1.0
    # grid_sample wants the last spatial axis first in the coordinate dimension.
    return torch.from_numpy(np.moveaxis(normalised[::-1], 0, -1).copy()).float()[None]


def _warp(
    img: NdarrayOrTensor, grid: torch.Tensor, mode: str, padding_mode: str
) -> NdarrayOrTensor:
    """Resample ``(C, *S)`` at ``grid``.

    Float images keep their dtype; integer images come back float32, except in ``"nearest"`` mode,
    where integer labels keep their dtype.
    """
    x = torch.as_tensor(img)
    work = x if x.is_floating_point() else x.float()
    out = F.grid_sample(
        work[None],
        grid.to(device=work.device, dtype=work.dtype),
        mode=mode,
        padding_mode=padding_mode,
        align_corners=True,
    )[0]
    dtype = x.dtype if x.is_floating_point() or mode == "nearest" else torch.float32
    return convert_to_dst_type(out, img, dtype=dtype)[0]


class RandFieldAffine(RandomizableTransform):
    """Warp an image with a per-pixel affine transform whose parameters are random fields.

    Mansfield et al. 2023. At output pixel ``p`` (relative to the image centre, ``q``) the input
    is sampled at ``p + u(p)`` with::

        u(p) = s * shift * t(p) + (exp(s * scale * g(p)) * R(s * rotation * w(p)) - I) q

    where ``s = strength``, ``R(.)`` is the rotation by the given angle(s), and ``t`` (one field
    per spatial axis), ``g`` and ``w`` (one angle in 2D, a rotation vector in 3D) are independent
    :func:`gaussian_random_field` draws. ``shift`` (pixels), ``rotation``
    (radians) and ``scale`` (log-scale) are the per-pixel standard deviations at ``strength=1``;
    the fields are Gaussian, so they are typical sizes, not bounds. Resampling is
    ``torch.nn.functional.grid_sample`` with border padding. The last displacement is kept in
    ``self.displacement`` ``(d, *spatial)``, in pixels.

    Args:
        strength: scales all fields; 0 returns the input unchanged.
        length_scale: correlation length of the fields in pixels.
        prob: probability of warping.
        shift, rotation, scale: see above.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"`` (labels).
        padding_mode: ``grid_sample`` padding for samples that fall outside the image.
    """

    def __init__(
        self,
        strength: float = 1.0,
        length_scale: float = 16.0,
        prob: float = 1.0,
        shift: float = 4.0,
        rotation: float = 0.2,
        scale: float = 0.1,
        mode: str = "bilinear",
        padding_mode: str = "border",
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        self.strength, self.length_scale = strength, length_scale
        self.shift, self.rotation, self.scale = shift, rotation, scale
        self.mode, self.padding_mode = mode, padding_mode
        self.displacement: np.ndarray | None = None

    def _field(self, shape: tuple[int, ...], n: int) -> np.ndarray:
        return np.stack([gaussian_random_field(shape, self.length_scale, self.R) for _ in range(n)])

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        """Draw the next random displacement field for images of ``spatial_shape``."""
        super().randomize(None)
        self.displacement = None
        if not self._do_transform or self.strength == 0:
            return
        shape = tuple(spatial_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"RandFieldAffine works on 2D or 3D images, got spatial {shape}")
        s = self.strength
        translation = s * self.shift * self._field(shape, len(shape))
        log_scale = s * self.scale * self._field(shape, 1)
        angles = s * self.rotation * self._field(shape, 1 if len(shape) == 2 else 3)
        centre = np.array([(n - 1) / 2 for n in shape]).reshape(-1, *[1] * len(shape))
        q = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")) - centre
        self.displacement = translation + np.exp(log_scale) * _rotate(q, angles) - q

    def __call__(
        self, img: NdarrayOrTensor, randomize: bool = True, mode: str | None = None
    ) -> NdarrayOrTensor:
        if randomize:
            self.randomize(img.shape[1:])
        if self.displacement is None:
            return img
        if tuple(self.displacement.shape[1:]) != tuple(img.shape[1:]):
            raise ValueError(
                f"image spatial shape {tuple(img.shape[1:])} differs from the drawn field's "
                f"{self.displacement.shape[1:]}"
            )
        grid = _sampling_grid(self.displacement)
        return _warp(img, grid, mode or self.mode, self.padding_mode)


class RandFieldIntensity(RandomizableTransform):
    """Multiply an image by a smooth random gain field and add a smooth random offset field.

    Mansfield et al. 2023, the colour transforms made per-pixel::

        out = img * exp(0.3 * strength * g1) + 0.1 * strength * g2

    with ``g1``, ``g2`` independent :func:`gaussian_random_field` draws. The offset is in image
    units, so apply it to images scaled to about [0, 1] (or z-scored); the output is not clipped.
    One field is shared by all channels unless ``channel_wise=True``.

    Args:
        strength: scales both fields; 0 returns the input unchanged.
        length_scale: correlation length of the fields in pixels.
        prob: probability of applying.
        channel_wise: draw independent fields for each channel (a colour change for RGB).
    """

    def __init__(
        self,
        strength: float = 1.0,
        length_scale: float = 16.0,
        prob: float = 1.0,
        channel_wise: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        self.strength, self.length_scale, self.channel_wise = strength, length_scale, channel_wise
        self.gain: np.ndarray | None = None
        self.offset: np.ndarray | None = None

    def randomize(self, shape: Sequence[int]) -> None:
        """Draw gain and offset fields for an image of ``shape`` ``(C, *spatial)``."""
        super().randomize(None)
        self.gain = self.offset = None
        if not self._do_transform or self.strength == 0:
            return
        n = shape[0] if self.channel_wise else 1
        spatial = tuple(shape[1:])
        g1 = np.stack([gaussian_random_field(spatial, self.length_scale, self.R) for _ in range(n)])
        g2 = np.stack([gaussian_random_field(spatial, self.length_scale, self.R) for _ in range(n)])
        self.gain = np.exp(0.3 * self.strength * g1)
        self.offset = 0.1 * self.strength * g2

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize(img.shape)
        if self.gain is None or self.offset is None:
            return img
        x = torch.as_tensor(img)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        gain = torch.as_tensor(self.gain, dtype=dtype, device=x.device)
        offset = torch.as_tensor(self.offset, dtype=dtype, device=x.device)
        return convert_to_dst_type(x.to(dtype) * gain + offset, img, dtype=dtype)[0]


class _RandFieldd(RandomizableTransform, MapTransform):
    """Dict form of a random-field transform ``self.transform``: with probability ``prob`` one
    draw, sized by the first key's image, is applied to every key alike."""

    def __init__(
        self,
        keys: KeysCollection,
        transform: RandFieldAffine | RandFieldIntensity,
        prob: float,
        allow_missing_keys: bool,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = transform

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> Self:
        """Seed this transform and its array form alike."""
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def _draw(self, img: NdarrayOrTensor) -> None:
        """Draw the array form's fields for images shaped like ``img`` ``(C, *spatial)``."""
        raise NotImplementedError

    def _apply(self, d: dict[Hashable, NdarrayOrTensor]) -> None:
        """Apply the drawn fields to every key of ``d``, in place."""
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], randomize=False)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first = self.first_key(d)
        if not self._do_transform or first == ():
            return d
        self._draw(d[first])
        self._apply(d)
        return d


class RandFieldAffined(_RandFieldd):
    """Dict form of :class:`RandFieldAffine`: one field warps every key (image and label alike).

    ``mode`` may give one mode per key, e.g. ``("bilinear", "nearest")`` for image and label.
    """

    def __init__(
        self,
        keys: KeysCollection,
        strength: float = 1.0,
        length_scale: float = 16.0,
        prob: float = 1.0,
        shift: float = 4.0,
        rotation: float = 0.2,
        scale: float = 0.1,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        warp = RandFieldAffine(
            strength, length_scale, 1.0, shift, rotation, scale, padding_mode=padding_mode
        )
        super().__init__(keys, warp, prob, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))

    def _draw(self, img: NdarrayOrTensor) -> None:
        self.transform.randomize(img.shape[1:])

    def _apply(self, d: dict[Hashable, NdarrayOrTensor]) -> None:
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.transform(d[key], randomize=False, mode=mode)


class RandFieldIntensityd(_RandFieldd):
    """Dict form of :class:`RandFieldIntensity`: the same fields for every key."""

    def __init__(
        self,
        keys: KeysCollection,
        strength: float = 1.0,
        length_scale: float = 16.0,
        prob: float = 1.0,
        channel_wise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        intensity = RandFieldIntensity(strength, length_scale, 1.0, channel_wise)
        super().__init__(keys, intensity, prob, allow_missing_keys)

    def _draw(self, img: NdarrayOrTensor) -> None:
        self.transform.randomize(img.shape)
