"""Batched random augmentations that make the views of contrastive objectives.

Everything works on a batch ``(B, C, H, W)`` of images or ``(B, C, D, H, W)`` of volumes in
[0, 1] (C = 1 grey-scale or 3 RGB) and draws one set of parameters per sample, vectorised: crops
and flips are one ``torch.nn.functional.grid_sample`` with per-sample affine grids (``(B, 2, 3)``
thetas in 2D, ``(B, 3, 4)`` in 3D, trilinear), blur is one grouped convolution per axis with
per-sample kernels. Volumes take their own crop branch (:func:`crop_flip_theta_3d`).

Randomness is keyed by each sample's own seed, never by the batch it lands in. The views take
``sample_seeds``, a ``(B,)`` integer tensor (the engine's ``batch["sample_seed"]``, a pure
function of ``(seed, step, position in the global batch)``); every random number of sample ``i``
(crop, flip, intensity, blur, the noise image, the random field) comes from generators seeded by
``sample_seeds[i]`` mixed (:func:`mix_seeds`) with the view (view 1, view 2, local crop ``j``) and
the augmentation step. A sample's views therefore do not depend on the other samples of its
batch (its random parameters bit for bit; its pixels up to the float rounding of the batched
blur convolution, about 1e-7), so N DDP processes or DataLoader workers make the views of one
process at the same global batch, and a resumed run replays them exactly. The parameters are
drawn on the CPU (then moved to the images' device); only the draws are per sample, the image
operations stay batched. Without ``sample_seeds`` (e.g. an objective called by hand) the seeds
are drawn from the global torch RNG, so views stay random and ``torch.manual_seed`` fixes them.
Objectives pass their batch's seeds with :func:`call_views`.

A view ``size`` is an int (a square or a cube), ``(h, w)`` or ``(d, h, w)``; a 2D batch given a
3D size uses its last two entries, so one size serves a unified 2D + 3D encoder.

The recipe follows SimCLR (Chen et al. 2020) and DINO (Caron et al. 2021) with the colour jitter
replaced by grey-scale friendly intensity changes: brightness (a window-level shift), contrast
(a window-width scaling around the image mean) and gamma. Optionally a smooth random gain/offset
field (:class:`medfm.data.transforms.random_fields.RandFieldIntensity`, Mansfield et al. 2023) is
applied.

Example:
    >>> views = TwoViews(16)
    >>> seeds = torch.tensor([11, 12, 13, 14])
    >>> v1, v2 = views(torch.rand(4, 1, 32, 32), sample_seeds=seeds)
    >>> v1.shape
    torch.Size([4, 1, 16, 16])
    >>> TwoViews((8, 16, 16))(torch.rand(2, 1, 16, 32, 32))[0].shape
    torch.Size([2, 1, 8, 16, 16])
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfm.data.transforms.random_fields import RandFieldIntensity
from medfm.ssl.masking import per_sample_uniform

Size = int | tuple[int, int] | tuple[int, int, int]

# streams of one view's seed, one per augmentation step: a step's draws do not shift another's
_CROP, _FIELD, _JITTER, _BLUR, _NOISE, _NOISE_IMAGE = range(1, 7)
_VIEW = 1000  # view v of a sample is stream _VIEW + v of its seed
_CPU = torch.device("cpu")
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def mix_seeds(seeds: torch.Tensor, key: int) -> torch.Tensor:
    """The seeds of stream ``key``: ``(B,)`` integer seeds -> ``(B,)`` CPU int64 in [0, 2**63).

    SplitMix64's output function (Steele et al. 2014) applied to ``seed + (key + 1) * 0x9E37...``
    (the golden-ratio increment), vectorised in numpy ``uint64`` arithmetic (which wraps). A pure
    function of ``(seed, key)``: different keys (view 1, view 2, local crop ``j``; crop, blur,
    noise ...) give unrelated streams, also unrelated to the raw seed that MAE's masks use.
    """
    z = seeds.detach().to(_CPU, torch.int64).numpy().astype(np.uint64)  # negatives wrap
    z = z + np.uint64((0x9E3779B97F4A7C15 * (int(key) + 1)) & _U64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(1)).astype(np.int64))


def view_seeds(sample_seeds: torch.Tensor, view: int) -> torch.Tensor:
    """Per-sample seeds of view ``view`` (0, 1 the two/global views, 2 + j local crop ``j``)."""
    return mix_seeds(sample_seeds, _VIEW + view)


def resolve_seeds(sample_seeds: torch.Tensor | None, n: int) -> torch.Tensor:
    """``sample_seeds`` checked and as CPU int64 ``(n,)``; when None, ``n`` seeds drawn from the
    global torch RNG (so views stay random and ``torch.manual_seed`` fixes them)."""
    if sample_seeds is None:
        return torch.randint(0, 2**62, (n,))
    seeds = torch.as_tensor(sample_seeds)
    if seeds.shape != (n,) or seeds.is_floating_point() or seeds.is_complex():
        raise ValueError(
            f"sample_seeds must be ({n},) integers, one per sample; got {seeds.dtype} "
            f"{tuple(seeds.shape)}"
        )
    return seeds.detach().to(_CPU, torch.int64)


def _draws(n: int, k: int, sample_seeds: torch.Tensor | None, stream: int) -> torch.Tensor:
    """``(n, k)`` CPU float32 U(0, 1) draws: row ``i`` from sample ``i``'s seed (stream
    ``stream``), or from the global torch RNG when ``sample_seeds`` is None."""
    if sample_seeds is None:
        return torch.rand(n, k)
    seeds = mix_seeds(resolve_seeds(sample_seeds, n), stream)
    return per_sample_uniform(seeds, k, _CPU)


def _per_sample_normal(
    seeds: torch.Tensor, shape: Sequence[int], mask: torch.Tensor
) -> torch.Tensor:
    """``(B, *shape)`` standard normal noise, row ``i`` from a generator seeded by ``seeds[i]``;
    rows where ``mask`` is False are zeros (not drawn)."""
    out = torch.zeros(len(seeds), *shape)
    for i in mask.nonzero().flatten().tolist():
        out[i] = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seeds[i])))
    return out


def _lerp(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """U(0, 1) draws -> U(low, high)."""
    return low + (high - low) * u


def call_views(
    views: Callable[..., Any], images: torch.Tensor, sample_seeds: torch.Tensor | None
) -> Any:
    """``views(images, sample_seeds=sample_seeds)`` for views that take per-sample seeds
    (:class:`TwoViews`, :class:`MultiCrop`, :class:`Augment`, or any callable with a
    ``sample_seeds`` parameter); plain ``views(images)`` for a callable without one (e.g. a
    fixed, deterministic view; a random one then keeps its own randomness)."""
    if sample_seeds is not None and _takes_sample_seeds(views):
        return views(images, sample_seeds=sample_seeds)
    return views(images)


def _takes_sample_seeds(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == "sample_seeds" or p.kind is p.VAR_KEYWORD for p in params)


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


@dataclasses.dataclass
class Augment:
    """One random view per sample: crop + flip -> random field -> intensity jitter -> blur ->
    noise -> clip to [0, 1]. Call with ``(B, C, H, W)``, get ``(B, C, size, size)``; or with
    ``(B, C, D, H, W)``, get ``(B, C, size, size, size)``. ``sample_seeds`` (``(B,)`` ints, one
    per sample) key every draw of sample ``i``, each step on its own stream of the seed; without
    them seeds are drawn from the global torch RNG.

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
