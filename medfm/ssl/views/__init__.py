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
(a window-width scaling around the image mean) and gamma. Optionally a smooth random warp
(:class:`medfm.data.transforms.random_fields.RandFieldAffine`) and a smooth random gain/offset
field (:class:`~medfm.data.transforms.random_fields.RandFieldIntensity`) of Mansfield et al. 2023
are applied.

The parts: :mod:`~medfm.ssl.views.seeds` (per-sample seeds and draws, :func:`call_views`),
:mod:`~medfm.ssl.views.geometry` (crops and flips), :mod:`~medfm.ssl.views.intensity`
(intensity jitter, blur, noise, random fields) and :mod:`~medfm.ssl.views.compose`
(:class:`Augment`, :class:`TwoViews`, :class:`MultiCrop`).

Example:
    >>> views = TwoViews(16)
    >>> seeds = torch.tensor([11, 12, 13, 14])
    >>> v1, v2 = views(torch.rand(4, 1, 32, 32), sample_seeds=seeds)
    >>> v1.shape
    torch.Size([4, 1, 16, 16])
    >>> TwoViews((8, 16, 16))(torch.rand(2, 1, 16, 32, 32))[0].shape
    torch.Size([2, 1, 8, 16, 16])
"""

from medfm.ssl.views.compose import Augment, MultiCrop, TwoViews
from medfm.ssl.views.geometry import (
    Size,
    crop_flip_theta,
    crop_flip_theta_3d,
    random_field_affine,
    random_resized_crop,
)
from medfm.ssl.views.intensity import (
    adjust_intensity,
    gaussian_blur,
    random_field_intensity,
    random_gaussian_blur,
    random_gaussian_noise,
    random_intensity_jitter,
)
from medfm.ssl.views.seeds import call_views, mix_seeds, resolve_seeds, view_seeds

__all__ = [
    "Augment",
    "MultiCrop",
    "Size",
    "TwoViews",
    "adjust_intensity",
    "call_views",
    "crop_flip_theta",
    "crop_flip_theta_3d",
    "gaussian_blur",
    "mix_seeds",
    "random_field_affine",
    "random_field_intensity",
    "random_gaussian_blur",
    "random_gaussian_noise",
    "random_intensity_jitter",
    "random_resized_crop",
    "resolve_seeds",
    "view_seeds",
]
