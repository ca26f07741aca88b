"""Random resized crops and flips of images and volumes: one ``grid_sample`` per batch with
per-sample affine grids (``(B, 2, 3)`` thetas in 2D, ``(B, 3, 4)`` in 3D); and the random-field
warp of Mansfield et al. 2023 (:func:`random_field_affine`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medfm.data.transforms.random_fields import RandFieldAffine
from medfm.ssl.views.seeds import _CROP, _FIELD_AFFINE, _draws, _lerp, mix_seeds, resolve_seeds

Size = int | tuple[int, int] | tuple[int, int, int]


def _spatial_size(size: Size, spatial_dims: int) -> tuple[int, ...]:
    """A view size for ``spatial_dims`` (2 or 3) axes: an int repeated, ``(h, w)`` or
    ``(d, h, w)``; a 3D size for a 2D batch gives its ``(h, w)``."""
    if isinstance(size, int):
        return (int(size),) * spatial_dims
    sides = tuple(int(s) for s in size)
    if len(sides) == 3 and spatial_dims == 2:
        return sides[1:]
    if len(sides) != spatial_dims:
        raise ValueError(
            f"view size {sides} does not fit a {spatial_dims}D batch; use an int or "
            f"{spatial_dims} sides"
        )
    return sides


def crop_flip_theta(
    n: int,
    in_hw: tuple[int, int],
    scale: Sequence[float] = (0.4, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    sample_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample affine matrices ``(n, 2, 3)`` for ``F.affine_grid`` (random resized crop + flip).

    As torchvision's ``RandomResizedCrop``: the crop covers a fraction ``U(scale)`` of the image
    area with aspect ratio log-uniform in ``ratio``; sides longer than the image are clipped to it
    (instead of re-drawing). The crop lies inside the image; ``flip_prob`` mirrors it horizontally.
    Row ``i`` is drawn from ``sample_seeds[i]`` (``(n,)`` ints), or from the global torch RNG.
    """
    h, w = in_hw
    u = _draws(n, 5, sample_seeds, _CROP)
    area = _lerp(u[:, 0], *scale)
    aspect = _lerp(u[:, 1], math.log(ratio[0]), math.log(ratio[1])).exp()
    # side lengths as fractions of the image side: (fw * w) * (fh * h) = area * w * h
    fw = (area * aspect * h / w).sqrt().clamp(max=1.0)
    fh = (area / aspect * w / h).sqrt().clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - fw)  # centre in [-1, 1] coordinates
    cy = (2 * u[:, 3] - 1) * (1 - fh)
    sign = torch.where(u[:, 4] < flip_prob, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = fw * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = fh, cy
    return theta


def crop_flip_theta_3d(
    n: int,
    in_dhw: tuple[int, int, int],
    scale: Sequence[float] = (0.4, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    sample_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample affine matrices ``(n, 3, 4)`` for a 5-D ``F.affine_grid`` (random resized crop
    of a volume + flip).

    :func:`crop_flip_theta` in 3D: the crop covers a fraction ``U(scale)`` of the volume, its
    width : height and depth : height ratios are independently log-uniform in ``ratio``
    (in voxels), sides longer than the volume are clipped to it, the crop lies inside the volume,
    and ``flip_prob`` mirrors it along W (the last axis, as the 2D flip). Rows of theta act on
    ``grid_sample``'s ``(x, y, z) = (W, H, D)`` coordinates. Row ``i`` is drawn from
    ``sample_seeds[i]``, or from the global torch RNG.
    """
    d, h, w = in_dhw
    u = _draws(n, 7, sample_seeds, _CROP)
    volume = _lerp(u[:, 0], *scale)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect_w = _lerp(u[:, 1], log_lo, log_hi).exp()  # crop width / crop height
    aspect_d = _lerp(u[:, 2], log_lo, log_hi).exp()  # crop depth / crop height
    side_h = (volume * d * h * w / (aspect_w * aspect_d)).pow(1 / 3)  # voxels
    fw = (aspect_w * side_h / w).clamp(max=1.0)
    fh = (side_h / h).clamp(max=1.0)
    fd = (aspect_d * side_h / d).clamp(max=1.0)
    centre = (2 * u[:, 3:6] - 1) * (1 - torch.stack([fw, fh, fd], dim=1))  # (x, y, z)
    sign = torch.where(u[:, 6] < flip_prob, -1.0, 1.0)
    theta = torch.zeros(n, 3, 4)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 2, 2] = fw * sign, fh, fd
    theta[:, :, 3] = centre
    return theta


def random_resized_crop(
    images: torch.Tensor,
    size: Size,
    scale: Sequence[float] = (0.4, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    sample_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, size, size)``: a random crop per sample, resized (bilinear)
    and horizontally flipped with probability ``flip_prob``; see :func:`crop_flip_theta`.

    ``(B, C, D, H, W)`` -> ``(B, C, size, size, size)`` (or ``size = (d, h, w)``): the same in 3D,
    trilinear, flipped along W; see :func:`crop_flip_theta_3d`. Sample ``i``'s crop is drawn
    from ``sample_seeds[i]`` (``(B,)`` ints) when given, otherwise from the global torch RNG.
    """
    b, c = images.shape[:2]
    if images.ndim == 5:
        in_dhw = tuple(images.shape[-3:])
        theta = crop_flip_theta_3d(b, in_dhw, scale, ratio, flip_prob, sample_seeds)
    else:
        theta = crop_flip_theta(b, tuple(images.shape[-2:]), scale, ratio, flip_prob, sample_seeds)
    theta = theta.to(device=images.device, dtype=images.dtype)
    out_size = [b, c, *_spatial_size(size, images.ndim - 2)]
    grid = F.affine_grid(theta, out_size, align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_field_affine(
    images: torch.Tensor,
    strength: float,
    length_scale: float = 16.0,
    sample_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """:class:`~medfm.data.transforms.random_fields.RandFieldAffine` on each sample of
    ``(B, C, H, W)`` or ``(B, C, D, H, W)``: a smooth per-pixel translation, rotation and scaling
    (Mansfield et al. 2023, "Random Field Augmentations for Self-Supervised Representation
    Learning"), with its default per-pixel sizes at ``strength=1`` and ``length_scale`` in
    pixels of the view; border padding. Not vectorised (one numpy FFT per field). Sample ``i``'s
    field is seeded from ``sample_seeds[i]`` (its own stream); without seeds one generator
    seeded from the global torch RNG runs through the batch. ``strength=0`` returns ``images``.
    """
    if strength <= 0:
        return images
    warp = RandFieldAffine(strength=strength, length_scale=length_scale)
    if sample_seeds is None:
        warp.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,))))
        return torch.stack([warp(img) for img in images])
    seeds = mix_seeds(resolve_seeds(sample_seeds, images.shape[0]), _FIELD_AFFINE)
    out = []
    for img, seed in zip(images, seeds.tolist(), strict=True):
        warp.set_random_state(seed=seed % 2**32)  # numpy RandomState takes 32-bit seeds
        out.append(warp(img))
    return torch.stack(out)
