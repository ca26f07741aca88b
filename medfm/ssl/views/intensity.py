"""Random intensity changes of images and volumes in [0, 1]: brightness, contrast and gamma
jitter, Gaussian blur (one grouped convolution per axis with per-sample kernels), white noise
and a smooth random gain/offset field."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medfm.data.transforms.random_fields import RandFieldIntensity
from medfm.ssl.views.seeds import (
    _BLUR,
    _FIELD,
    _JITTER,
    _NOISE,
    _NOISE_IMAGE,
    _draws,
    _lerp,
    _per_sample_normal,
    mix_seeds,
    resolve_seeds,
)


def _broadcastable(t: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-sample ``(B,)`` -> ``(B, 1, ..., 1)`` on ``images``' device, to broadcast against it."""
    return t.to(images.device).view((-1,) + (1,) * (images.ndim - 1))


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
    sample_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """With probability ``prob`` per sample: brightness shift ``U(-brightness, brightness)``,
    contrast factor ``U(1 - contrast, 1 + contrast)`` and gamma log-uniform in
    ``[1 / (1 + gamma), 1 + gamma]`` (see :func:`adjust_intensity`); the other samples only get
    clipped to [0, 1]. Draws per sample from ``sample_seeds`` or the global torch RNG."""
    u = _draws(images.shape[0], 4, sample_seeds, _JITTER)
    apply = (u[:, 0] < prob).float()
    shift = _lerp(u[:, 1], -brightness, brightness) * apply
    factor = 1 + _lerp(u[:, 2], -contrast, contrast) * apply
    log_g = math.log1p(gamma)
    exponent = (_lerp(u[:, 3], -log_g, log_g) * apply).exp()
    return adjust_intensity(images, shift, factor, exponent)


def _gaussian_kernels(
    sigma: torch.Tensor, channels: int, images: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Normalised 1D kernels ``(B * C, 2r + 1)`` for std ``sigma`` ``(B,)``, and the radius r.

    Sample ``i``'s kernel is truncated at its own radius ``max(1, ceil(3 sigma_i))`` (zero taps
    beyond) and ``r`` is the largest of these, so a sample's kernel does not depend on the other
    samples' sigmas."""
    sigma = sigma.to(device=images.device, dtype=images.dtype).clamp(min=1e-3)
    radii = torch.ceil(3 * sigma.double()).clamp(min=1)  # (B,)
    radius = int(radii.max())
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)  # (B, k)
    kernel = kernel * (offsets[None].abs() <= radii[:, None].to(images.dtype))
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

    Separable, replicate padding, each sample's kernel truncated at radius
    ``max(1, ceil(3 sigma))``; one grouped convolution per axis for the whole batch (padded to
    the largest radius with zero taps). A sample's blur is therefore the same whatever else is in
    its batch, up to the float rounding of the convolution (about 1e-7). Takes ``(B, C, H, W)``
    or ``(B, C, D, H, W)``.
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
    images: torch.Tensor,
    sigma: Sequence[float] = (0.1, 1.5),
    prob: float = 0.5,
    sample_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """With probability ``prob`` per sample, :func:`gaussian_blur` with std ``U(sigma)`` pixels.
    Draws per sample from ``sample_seeds`` or the global torch RNG."""
    u = _draws(images.shape[0], 2, sample_seeds, _BLUR)
    apply = u[:, 0] < prob
    if not apply.any():
        return images
    blurred = gaussian_blur(images, _lerp(u[:, 1], *sigma))
    return torch.where(_broadcastable(apply, images), blurred, images)


def random_gaussian_noise(
    images: torch.Tensor,
    std: float = 0.05,
    prob: float = 0.5,
    sample_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """With probability ``prob`` per sample, add white noise of std ``U(0, std)``.

    With ``sample_seeds`` the std, the coin and the noise image of sample ``i`` all come from
    ``sample_seeds[i]`` (one generator per noisy sample); otherwise from the global torch RNG."""
    b = images.shape[0]
    u = _draws(b, 2, sample_seeds, _NOISE)
    scale = _lerp(u[:, 0], 0.0, std) * (u[:, 1] < prob).float()
    if sample_seeds is None:
        noise = torch.randn(images.shape)
    else:
        seeds = mix_seeds(resolve_seeds(sample_seeds, b), _NOISE_IMAGE)
        noise = _per_sample_normal(seeds, images.shape[1:], scale > 0)
    noise = noise * scale.view((-1,) + (1,) * (images.ndim - 1))
    return images + noise.to(device=images.device, dtype=images.dtype)


def random_field_intensity(
    images: torch.Tensor,
    strength: float,
    length_scale: float = 8.0,
    sample_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """:class:`~medfm.data.transforms.random_fields.RandFieldIntensity` on each sample (not
    vectorised: one
    numpy FFT per field). Sample ``i``'s field is seeded from ``sample_seeds[i]``; without seeds
    one field generator seeded from the global torch RNG runs through the batch.
    ``strength=0`` returns ``images``."""
    if strength <= 0:
        return images
    field = RandFieldIntensity(strength=strength, length_scale=length_scale)
    if sample_seeds is None:
        field.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,))))
        return torch.stack([field(img) for img in images])
    seeds = mix_seeds(resolve_seeds(sample_seeds, images.shape[0]), _FIELD)
    out = []
    for img, seed in zip(images, seeds.tolist(), strict=True):
        field.set_random_state(seed=seed % 2**32)  # numpy RandomState takes 32-bit seeds
        out.append(field(img))
    return torch.stack(out)
