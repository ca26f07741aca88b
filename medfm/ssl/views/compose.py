"""The views objectives call: :class:`Augment` (one random view per sample), :class:`TwoViews`
(SimCLR) and :class:`MultiCrop` (DINO)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from medfm.ssl.views.geometry import Size, random_field_affine, random_resized_crop
from medfm.ssl.views.intensity import (
    random_field_intensity,
    random_gaussian_blur,
    random_gaussian_noise,
    random_intensity_jitter,
)
from medfm.ssl.views.seeds import resolve_seeds, view_seeds


@dataclasses.dataclass
class Augment:
    """One random view per sample: crop + flip -> random-field warp -> random intensity field ->
    intensity jitter -> blur -> noise -> clip to [0, 1]. Call with ``(B, C, H, W)``, get
    ``(B, C, size, size)``; or with ``(B, C, D, H, W)``, get ``(B, C, size, size, size)``.
    ``sample_seeds`` (``(B,)`` ints, one per sample) key every draw of sample ``i``, each step on
    its own stream of the seed; without them seeds are drawn from the global torch RNG.

    Args:
        size: output side, ``(h, w)`` or ``(d, h, w)`` (a 2D batch uses the last two).
        scale, ratio, flip_prob: :func:`random_resized_crop`.
        brightness, contrast, gamma, jitter_prob: :func:`random_intensity_jitter`.
        blur_sigma, blur_prob: :func:`random_gaussian_blur` (sigma in output pixels/voxels).
        noise_std, noise_prob: :func:`random_gaussian_noise`.
        random_field_strength, random_field_length_scale: :func:`random_field_intensity`
            (0 = off).
        random_field_affine_strength, random_field_affine_length_scale:
            :func:`~medfm.ssl.views.geometry.random_field_affine` (0 = off), on the cropped
            view (length scale in its pixels).
    """

    size: Size
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: float = 0.2
    jitter_prob: float = 0.8
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    blur_prob: float = 0.5
    noise_std: float = 0.05
    noise_prob: float = 0.5
    random_field_strength: float = 0.0
    random_field_length_scale: float = 8.0
    random_field_affine_strength: float = 0.0
    random_field_affine_length_scale: float = 16.0

    def __call__(
        self, images: torch.Tensor, sample_seeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        if images.ndim not in (4, 5):
            raise ValueError(
                "views need a (B, C, H, W) or (B, C, D, H, W) batch, got shape "
                f"{tuple(images.shape)}"
            )
        seeds = resolve_seeds(sample_seeds, images.shape[0])
        x = random_resized_crop(
            images, self.size, self.scale, self.ratio, self.flip_prob, sample_seeds=seeds
        )
        x = random_field_affine(
            x,
            self.random_field_affine_strength,
            self.random_field_affine_length_scale,
            sample_seeds=seeds,
        )
        x = random_field_intensity(
            x, self.random_field_strength, self.random_field_length_scale, sample_seeds=seeds
        )
        x = random_intensity_jitter(
            x, self.brightness, self.contrast, self.gamma, self.jitter_prob, sample_seeds=seeds
        )
        x = random_gaussian_blur(x, self.blur_sigma, self.blur_prob, sample_seeds=seeds)
        x = random_gaussian_noise(x, self.noise_std, self.noise_prob, sample_seeds=seeds)
        return x.clamp(0.0, 1.0)


class TwoViews:
    """Two independent :class:`Augment` views of a batch (SimCLR). Keyword arguments go to
    :class:`Augment`.

    ``TwoViews(size)(images, sample_seeds)`` -> ``(view1, view2)``, each ``(B, C, size, size)``
    (or ``(B, C, size, size, size)`` for volumes); view ``v`` of sample ``i`` is drawn from
    :func:`view_seeds` ``(sample_seeds, v)[i]`` (seeds from the global torch RNG when None).
    """

    def __init__(self, size: Size, scale: Sequence[float] = (0.4, 1.0), **augment: Any) -> None:
        self.augment = Augment(size, scale=tuple(scale), **augment)

    def __call__(
        self, images: torch.Tensor, sample_seeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seeds = resolve_seeds(sample_seeds, images.shape[0])
        return self.augment(images, view_seeds(seeds, 0)), self.augment(
            images, view_seeds(seeds, 1)
        )

    def __repr__(self) -> str:
        return f"TwoViews({self.augment})"


class MultiCrop:
    """Multi-crop views (Caron et al. 2020/2021): 2 global crops then ``n_local`` small ones.

    ``MultiCrop(32, 16, 4)(images, sample_seeds)`` -> list of 2 ``(B, C, 32, 32)`` then 4
    ``(B, C, 16, 16)``; on volumes 2 ``(B, C, 32, 32, 32)`` then 4 ``(B, C, 16, 16, 16)``. Global
    crops cover ``global_scale`` of the image area (volume in 3D), local ones ``local_scale``.
    Crop ``v`` (0, 1 global, 2 + j local) of sample ``i`` is drawn from
    :func:`view_seeds` ``(sample_seeds, v)[i]`` (seeds from the global torch RNG when None).
    Keyword arguments go to both :class:`Augment` instances.
    """

    def __init__(
        self,
        global_size: Size,
        local_size: Size,
        n_local: int,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        **augment: Any,
    ) -> None:
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        self.n_local = int(n_local)
        self.global_augment = Augment(global_size, scale=tuple(global_scale), **augment)
        self.local_augment = Augment(local_size, scale=tuple(local_scale), **augment)

    def __call__(
        self, images: torch.Tensor, sample_seeds: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        seeds = resolve_seeds(sample_seeds, images.shape[0])
        crops = [self.global_augment(images, view_seeds(seeds, v)) for v in (0, 1)]
        return crops + [
            self.local_augment(images, view_seeds(seeds, 2 + j)) for j in range(self.n_local)
        ]

    def __repr__(self) -> str:
        return f"MultiCrop({self.global_augment}, {self.local_augment}, n_local={self.n_local})"
