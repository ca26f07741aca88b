"""Intensity preprocessing: CT Hounsfield windows, MRI percentile and z-score normalisation.

Every transform comes in two forms, as in MONAI (``monai/transforms/intensity/array.py`` and
``dictionary.py``): the array form holds the logic and works on one channel-first image,
``(C, H, W)`` or ``(C, D, H, W)``, as a numpy array or a torch tensor; the ``...d`` form applies it
to ``keys`` of a sample dict. The output has the input's type (numpy in, numpy out; a
``MetaTensor`` keeps its metadata) and is float32.

The work is done by MONAI's ``ScaleIntensityRange``, ``ScaleIntensityRangePercentiles`` and
``NormalizeIntensity``; this module adds the CT presets, the multi-window stack, and defaults that
suit our modalities.

Example:
    >>> import numpy as np
    >>> HounsfieldWindow("soft_tissue")(np.array([[-160.0, 40.0, 240.0]])).tolist()
    [[0.0, 0.5, 1.0]]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import (
    MapTransform,
    NormalizeIntensity,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    Transform,
)
from monai.utils import convert_to_dst_type, convert_to_tensor

# (level, width) in Hounsfield units; the window shows [level - width / 2, level + width / 2].
HU_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

Window = str | tuple[float, float]


def resolve_window(window: Window) -> tuple[float, float]:
    """``(level, width)`` of a preset name from :data:`HU_WINDOWS` or of an explicit pair."""
    if isinstance(window, str):
        if window not in HU_WINDOWS:
            raise KeyError(
                f"unknown HU window preset {window!r}; use one of {sorted(HU_WINDOWS)} "
                "or a (level, width) pair"
            )
        return HU_WINDOWS[window]
    level, width = (float(v) for v in window)
    if width <= 0:
        raise ValueError(f"HU window width must be positive, got {width}")
    return level, width


def _as_float32_like(out: NdarrayOrTensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
    """``out`` as float32 in the type of ``img`` (numpy, torch or MetaTensor with its metadata)."""
    return convert_to_dst_type(convert_to_tensor(out, track_meta=False), img, dtype=torch.float32)[
        0
    ]


class HounsfieldWindow(Transform):
    """Clip a CT image to a Hounsfield window and scale it to [0, 1].

    Values at or below ``level - width / 2`` become 0, at or above ``level + width / 2`` become 1,
    and the window maps linearly in between. Wraps MONAI ``ScaleIntensityRange(clip=True)``.

    Args:
        window: a preset name from :data:`HU_WINDOWS` or a ``(level, width)`` pair in HU.
    """

    def __init__(self, window: Window = "soft_tissue") -> None:
        self.level, self.width = resolve_window(window)
        self._scale = ScaleIntensityRange(
            a_min=self.level - self.width / 2,
            a_max=self.level + self.width / 2,
            b_min=0.0,
            b_max=1.0,
            clip=True,
        )

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return _as_float32_like(self._scale(img), img)


class MultiWindowStack(Transform):
    """Turn a one-channel CT image into one [0, 1] channel per Hounsfield window.

    ``(1, *spatial)`` -> ``(len(presets), *spatial)``, channel ``i`` being
    ``HounsfieldWindow(presets[i])`` of the input. The default soft-tissue / lung / bone stack gives
    a 3-channel image that RGB-pretrained 2D backbones can take.

    Args:
        presets: preset names from :data:`HU_WINDOWS` or ``(level, width)`` pairs.
    """

    def __init__(self, presets: Sequence[Window] = ("soft_tissue", "lung", "bone")) -> None:
        if len(presets) == 0:
            raise ValueError("MultiWindowStack needs at least one window preset")
        self.windows = [HounsfieldWindow(w) for w in presets]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.shape[0] != 1:
            raise ValueError(
                f"MultiWindowStack expects a one-channel CT image (1, ...), got shape "
                f"{tuple(img.shape)}; select the channel first"
            )
        x = convert_to_tensor(img, track_meta=False)
        out = torch.cat([convert_to_tensor(w(x), track_meta=False) for w in self.windows], dim=0)
        return _as_float32_like(out, img)


class PercentileNormalize(Transform):
    """Scale an image so that its ``lower`` and ``upper`` percentiles map to 0 and 1 (for MRI).

    MRI intensities have no physical unit, so each image is scaled by its own robust range.
    Wraps MONAI ``ScaleIntensityRangePercentiles``. A constant image (or channel) becomes 0.

    Args:
        lower: lower percentile in [0, 100].
        upper: upper percentile in [0, 100], above ``lower``.
        clip: clip the result to [0, 1].
        channel_wise: take the percentiles of each channel separately (multi-sequence MRI).
    """

    def __init__(
        self,
        lower: float = 1.0,
        upper: float = 99.0,
        clip: bool = True,
        channel_wise: bool = False,
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self._scale = ScaleIntensityRangePercentiles(
            lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=clip, channel_wise=channel_wise
        )

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return _as_float32_like(self._scale(img), img)


class ZScoreNormalize(Transform):
    """Shift and scale an image to mean 0 and standard deviation 1.

    With ``nonzero=True`` the statistics come from the nonzero voxels only and zero voxels stay 0
    (the background of skull-stripped MRI, as in nnU-Net, Isensee et al. 2021). Wraps MONAI
    ``NormalizeIntensity``, which uses the population standard deviation; it is given a copy,
    because with ``nonzero=True`` MONAI 1.6 writes into the array it is given.

    Args:
        nonzero: compute and apply the statistics on nonzero voxels only.
        channel_wise: normalise each channel with its own statistics.
    """

    def __init__(self, nonzero: bool = False, channel_wise: bool = False) -> None:
        self._normalize = NormalizeIntensity(nonzero=nonzero, channel_wise=channel_wise)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = convert_to_tensor(img, dtype=torch.float32, track_meta=False).clone()
        return _as_float32_like(self._normalize(x), img)


class _ArrayMapd(MapTransform):
    """Apply one array transform to every key; the base of the dict forms in this module."""

    def __init__(
        self, keys: KeysCollection, transform: Transform, allow_missing_keys: bool
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class HounsfieldWindowd(_ArrayMapd):
    """Dict form of :class:`HounsfieldWindow`."""

    def __init__(
        self, keys: KeysCollection, window: Window = "soft_tissue", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, HounsfieldWindow(window), allow_missing_keys)


class MultiWindowStackd(_ArrayMapd):
    """Dict form of :class:`MultiWindowStack`."""

    def __init__(
        self,
        keys: KeysCollection,
        presets: Sequence[Window] = ("soft_tissue", "lung", "bone"),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, MultiWindowStack(presets), allow_missing_keys)


class PercentileNormalized(_ArrayMapd):
    """Dict form of :class:`PercentileNormalize`."""

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 1.0,
        upper: float = 99.0,
        clip: bool = True,
        channel_wise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = PercentileNormalize(lower, upper, clip, channel_wise)
        super().__init__(keys, transform, allow_missing_keys)


class ZScoreNormalized(_ArrayMapd):
    """Dict form of :class:`ZScoreNormalize`."""

    def __init__(
        self,
        keys: KeysCollection,
        nonzero: bool = False,
        channel_wise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, ZScoreNormalize(nonzero, channel_wise), allow_missing_keys)
