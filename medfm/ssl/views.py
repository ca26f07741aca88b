"""Batched random augmentations that make the views of contrastive objectives.

Everything works on a batch ``(B, C, H, W)`` of images or ``(B, C, D, H, W)`` of volumes in
[0, 1] (C = 1 grey-scale or 3 RGB) and draws one set of parameters per sample, vectorised: crops
and flips are one ``torch.nn.functional.grid_sample`` with per-sample affine grids (``(B, 2, 3)``
thetas in 2D, ``(B, 3, 4)`` in 3D, trilinear), blur is one grouped convolution per axis with
per-sample kernels. Random numbers come from the *global* torch RNG and are drawn on the CPU
(then moved to the images' device), so ``torch.manual_seed`` fixes the views and a run resumed
from a checkpoint's saved CPU RNG state replays them. Volumes take their own crop branch
(:func:`crop_flip_theta_3d`); the draws for 2D batches are the same, in number and order, as
before volumes were supported.

A view ``size`` is an int (a square or a cube), ``(h, w)`` or ``(d, h, w)``; a 2D batch given a
3D size uses its last two entries, so one size serves a unified 2D + 3D encoder.

The recipe follows SimCLR (Chen et al. 2020) and DINO (Caron et al. 2021) with the colour jitter
replaced by grey-scale friendly intensity changes: brightness (a window-level shift), contrast
(a window-width scaling around the image mean) and gamma. Optionally a smooth random gain/offset
field (:class:`medfm.data.random_fields.RandFieldIntensity`, Mansfield et al. 2023) is applied.

Example:
    >>> views = TwoViews(16)
    >>> v1, v2 = views(torch.rand(4, 1, 32, 32))
    >>> v1.shape
    torch.Size([4, 1, 16, 16])
    >>> TwoViews((8, 16, 16))(torch.rand(2, 1, 16, 32, 32))[0].shape
    torch.Size([2, 1, 8, 16, 16])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medfm.data.random_fields import RandFieldIntensity

Size = int | tuple[int, int] | tuple[int, int, int]


def _uniform(n: int, low: float, high: float) -> torch.Tensor:
    """``(n,)`` CPU float32 draws from U(low, high) with the global torch RNG."""
    return low + (high - low) * torch.rand(n)


def _coin(n: int, prob: float) -> torch.Tensor:
    """``(n,)`` CPU bool, True with probability ``prob``."""
    return torch.rand(n) < prob


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


def _broadcastable(t: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-sample ``(B,)`` -> ``(B, 1, ..., 1)`` on ``images``' device, to broadcast against it."""
    return t.to(images.device).view((-1,) + (1,) * (images.ndim - 1))


def crop_flip_theta(
    n: int,
    in_hw: tuple[int, int],
    scale: Sequence[float] = (0.4, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
) -> torch.Tensor:
    """Per-sample affine matrices ``(n, 2, 3)`` for ``F.affine_grid`` (random resized crop + flip).

    As torchvision's ``RandomResizedCrop``: the crop covers a fraction ``U(scale)`` of the image
    area with aspect ratio log-uniform in ``ratio``; sides longer than the image are clipped to it
    (instead of re-drawing). The crop lies inside the image; ``flip_prob`` mirrors it horizontally.
    """
    h, w = in_hw
    area = _uniform(n, *scale)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_r.exp()
    # side lengths as fractions of the image side: (fw * w) * (fh * h) = area * w * h
    fw = (area * aspect * h / w).sqrt().clamp(max=1.0)
    fh = (area / aspect * w / h).sqrt().clamp(max=1.0)
    cx = (2 * torch.rand(n) - 1) * (1 - fw)  # centre in [-1, 1] coordinates
    cy = (2 * torch.rand(n) - 1) * (1 - fh)
    sign = torch.where(_coin(n, flip_prob), -1.0, 1.0)
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
) -> torch.Tensor:
    """Per-sample affine matrices ``(n, 3, 4)`` for a 5-D ``F.affine_grid`` (random resized crop
    of a volume + flip).

    :func:`crop_flip_theta` in 3D: the crop covers a fraction ``U(scale)`` of the volume, its
    width : height and depth : height ratios are independently log-uniform in ``ratio``
    (in voxels), sides longer than the volume are clipped to it, the crop lies inside the volume,
    and ``flip_prob`` mirrors it along W (the last axis, as the 2D flip). Rows of theta act on
    ``grid_sample``'s ``(x, y, z) = (W, H, D)`` coordinates.
    """
    d, h, w = in_dhw
    volume = _uniform(n, *scale)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect_w = _uniform(n, log_lo, log_hi).exp()  # crop width / crop height
    aspect_d = _uniform(n, log_lo, log_hi).exp()  # crop depth / crop height
    side_h = (volume * d * h * w / (aspect_w * aspect_d)).pow(1 / 3)  # voxels
    fw = (aspect_w * side_h / w).clamp(max=1.0)
    fh = (side_h / h).clamp(max=1.0)
    fd = (aspect_d * side_h / d).clamp(max=1.0)
    centre = (2 * torch.rand(n, 3) - 1) * (1 - torch.stack([fw, fh, fd], dim=1))  # (x, y, z)
    sign = torch.where(_coin(n, flip_prob), -1.0, 1.0)
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
) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, size, size)``: a random crop per sample, resized (bilinear)
    and horizontally flipped with probability ``flip_prob``; see :func:`crop_flip_theta`.

    ``(B, C, D, H, W)`` -> ``(B, C, size, size, size)`` (or ``size = (d, h, w)``): the same in 3D,
    trilinear, flipped along W; see :func:`crop_flip_theta_3d`.
    """
    b, c = images.shape[:2]
    if images.ndim == 5:
        theta = crop_flip_theta_3d(b, tuple(images.shape[-3:]), scale, ratio, flip_prob)
    else:
        theta = crop_flip_theta(b, tuple(images.shape[-2:]), scale, ratio, flip_prob)
    theta = theta.to(device=images.device, dtype=images.dtype)
    out_size = [b, c, *_spatial_size(size, images.ndim - 2)]
    grid = F.affine_grid(theta, out_size, align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def adjust_intensity(
    images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """Per-sample ``(B,)`` intensity changes of images in [0, 1], in this order:

    ``x + brightness``; ``(x - mean) * contrast + mean`` (mean over the sample's pixels and
    channels); clip to [0, 1]; ``x ** gamma``. Identity at ``(0, 1, 1)``.
    """
    shape = (-1,) + (1,) * (images.ndim - 1)
    brightness, contrast, gamma = (
        t.to(device=images.device, dtype=images.dtype).view(shape)
        for t in (brightness, contrast, gamma)
    )
    x = images + brightness
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0.0, 1.0)
    return x.pow(gamma)


def random_intensity_jitter(
    images: torch.Tensor,
    brightness: float = 0.2,
    contrast: float = 0.2,
    gamma: float = 0.2,
    prob: float = 0.8,
) -> torch.Tensor:
    """With probability ``prob`` per sample: brightness shift ``U(-brightness, brightness)``,
    contrast factor ``U(1 - contrast, 1 + contrast)`` and gamma log-uniform in
    ``[1 / (1 + gamma), 1 + gamma]`` (see :func:`adjust_intensity`); the other samples only get
    clipped to [0, 1]."""
    b = images.shape[0]
    apply = _coin(b, prob).float()
    shift = _uniform(b, -brightness, brightness) * apply
    factor = 1 + _uniform(b, -contrast, contrast) * apply
    log_g = math.log1p(gamma)
    exponent = (_uniform(b, -log_g, log_g) * apply).exp()
    return adjust_intensity(images, shift, factor, exponent)


def _gaussian_kernels(
    sigma: torch.Tensor, channels: int, images: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Normalised 1D kernels ``(B * C, 2r + 1)`` for std ``sigma`` ``(B,)``, and the radius r."""
    sigma = sigma.to(device=images.device, dtype=images.dtype).clamp(min=1e-3)
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)  # (B, k)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    return kernel, radius


def _gaussian_blur_3d(volumes: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """:func:`gaussian_blur` of ``(B, C, D, H, W)``: one grouped ``conv3d`` per axis."""
    b, c, d, h, w = volumes.shape
    kernel, r = _gaussian_kernels(sigma, c, volumes)  # (B*C, k)
    k = kernel.shape[1]
    x = volumes.reshape(1, b * c, d, h, w)
    for axis, pad in enumerate(((0, 0, 0, 0, r, r), (0, 0, r, r, 0, 0), (r, r, 0, 0, 0, 0))):
        shape = [b * c, 1, 1, 1, 1]
        shape[2 + axis] = k
        x = F.conv3d(F.pad(x, pad, mode="replicate"), kernel.reshape(shape), groups=b * c)
    return x.reshape(b, c, d, h, w)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample with its own Gaussian of std ``sigma`` ``(B,)`` pixels (> 0).

    Separable, replicate padding, kernel radius ``ceil(3 * max(sigma))``; one grouped
    convolution per axis for the whole batch. Takes ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
    """
    if images.ndim == 5:
        return _gaussian_blur_3d(images, sigma)
    b, c, h, w = images.shape
    kernel, radius = _gaussian_kernels(sigma, c, images)  # (B*C, k)
    x = images.reshape(1, b * c, h, w)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel[:, None, :, None], groups=b * c)
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel[:, None, None, :], groups=b * c)
    return x.reshape(b, c, h, w)


def random_gaussian_blur(
    images: torch.Tensor, sigma: Sequence[float] = (0.1, 1.5), prob: float = 0.5
) -> torch.Tensor:
    """With probability ``prob`` per sample, :func:`gaussian_blur` with std ``U(sigma)`` pixels."""
    b = images.shape[0]
    apply = _coin(b, prob)
    sigmas = _uniform(b, *sigma)
    if not apply.any():
        return images
    blurred = gaussian_blur(images, sigmas)
    return torch.where(_broadcastable(apply, images), blurred, images)


def random_gaussian_noise(
    images: torch.Tensor, std: float = 0.05, prob: float = 0.5
) -> torch.Tensor:
    """With probability ``prob`` per sample, add white noise of std ``U(0, std)``."""
    b = images.shape[0]
    scale = _uniform(b, 0.0, std) * _coin(b, prob).float()
    noise = torch.randn(images.shape) * scale.view((-1,) + (1,) * (images.ndim - 1))
    return images + noise.to(device=images.device, dtype=images.dtype)


def random_field_intensity(
    images: torch.Tensor, strength: float, length_scale: float = 8.0
) -> torch.Tensor:
    """:class:`~medfm.data.random_fields.RandFieldIntensity` on each sample (not vectorised: one
    numpy FFT per field), seeded from the global torch RNG. ``strength=0`` returns ``images``."""
    if strength <= 0:
        return images
    field = RandFieldIntensity(strength=strength, length_scale=length_scale)
    field.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,))))
    return torch.stack([field(img) for img in images])


@dataclasses.dataclass
class Augment:
    """One random view per sample: crop + flip -> random field -> intensity jitter -> blur ->
    noise -> clip to [0, 1]. Call with ``(B, C, H, W)``, get ``(B, C, size, size)``; or with
    ``(B, C, D, H, W)``, get ``(B, C, size, size, size)``.

    Args:
        size: output side, ``(h, w)`` or ``(d, h, w)`` (a 2D batch uses the last two).
        scale, ratio, flip_prob: :func:`random_resized_crop`.
        brightness, contrast, gamma, jitter_prob: :func:`random_intensity_jitter`.
        blur_sigma, blur_prob: :func:`random_gaussian_blur` (sigma in output pixels/voxels).
        noise_std, noise_prob: :func:`random_gaussian_noise`.
        random_field_strength, random_field_length_scale: :func:`random_field_intensity`
            (0 = off).
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

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim not in (4, 5):
            raise ValueError(
                "views need a (B, C, H, W) or (B, C, D, H, W) batch, got shape "
                f"{tuple(images.shape)}"
            )
        x = random_resized_crop(images, self.size, self.scale, self.ratio, self.flip_prob)
        x = random_field_intensity(x, self.random_field_strength, self.random_field_length_scale)
        x = random_intensity_jitter(x, self.brightness, self.contrast, self.gamma, self.jitter_prob)
        x = random_gaussian_blur(x, self.blur_sigma, self.blur_prob)
        x = random_gaussian_noise(x, self.noise_std, self.noise_prob)
        return x.clamp(0.0, 1.0)


class TwoViews:
    """Two independent :class:`Augment` views of a batch (SimCLR). Keyword arguments go to
    :class:`Augment`.

    ``TwoViews(size)(images)`` -> ``(view1, view2)``, each ``(B, C, size, size)`` (or
    ``(B, C, size, size, size)`` for volumes).
    """

    def __init__(self, size: Size, scale: Sequence[float] = (0.4, 1.0), **augment) -> None:
        self.augment = Augment(size, scale=tuple(scale), **augment)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augment(images), self.augment(images)

    def __repr__(self) -> str:
        return f"TwoViews({self.augment})"


class MultiCrop:
    """Multi-crop views (Caron et al. 2020/2021): 2 global crops then ``n_local`` small ones.

    ``MultiCrop(32, 16, 4)(images)`` -> list of 2 ``(B, C, 32, 32)`` then 4 ``(B, C, 16, 16)``;
    on volumes 2 ``(B, C, 32, 32, 32)`` then 4 ``(B, C, 16, 16, 16)``. Global crops cover
    ``global_scale`` of the image area (volume in 3D), local ones ``local_scale``. Keyword
    arguments go to both :class:`Augment` instances.
    """

    def __init__(
        self,
        global_size: Size,
        local_size: Size,
        n_local: int,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        **augment,
    ) -> None:
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        self.n_local = int(n_local)
        self.global_augment = Augment(global_size, scale=tuple(global_scale), **augment)
        self.local_augment = Augment(local_size, scale=tuple(local_scale), **augment)

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        crops = [self.global_augment(images), self.global_augment(images)]
        return crops + [self.local_augment(images) for _ in range(self.n_local)]

    def __repr__(self) -> str:
        return f"MultiCrop({self.global_augment}, {self.local_augment}, n_local={self.n_local})"
