"""Preprocessing as configuration: ``data.preprocess`` is an ordered list of named steps.

Each step is a MONAI dict transform or one of medfm's (array + dict form), built through the
:data:`PREPROCESS_STEPS` registry from ``{name: ..., **arguments}``:

.. code-block:: yaml

    data:
      preprocess:
        - {name: orientation, axcodes: RAS}
        - {name: spacing, pixdim: [1.5, 1.5, 1.5]}
        - {name: hu_window, window: soft_tissue}   # or {name: multi_window, windows: [...]}
        - {name: crop_foreground}
      patch: {size: [96, 96, 96], samples_per_volume: 4}

Steps run on the loaded, channel-first image in its stored axis order (``(C, X, Y, Z)`` for
volumes, so ``spacing`` and ``orientation`` read the affine). Afterwards volumes are turned to
``(C, D, H, W)`` with D along the slices (:class:`SlicesFirstd`), the layout every 3D backbone
sees, and ``data.patch.size`` is given in that order.

``data.preprocess: null`` means the classic recipe: scale ``[intensity_min, intensity_max]`` to
``[0, 1]`` and resize to ``image_size`` (``depth_size`` slices). :func:`resolve_preprocess` writes
that list out, so the encoder's ``config.yaml`` always holds the steps it was trained with, and
every downstream command applies them again. All steps here are deterministic; random patch
sampling lives in :mod:`medfm.data.transforms.patches`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import (
    CropForegroundd,
    MapTransform,
    Orientationd,
    Resize,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)
from omegaconf import DictConfig, ListConfig, OmegaConf

from medfm.config import ConfigError
from medfm.data.transforms.geometry import CenterSliced
from medfm.data.transforms.intensity import (
    HounsfieldWindowd,
    MultiWindowStackd,
    PercentileNormalized,
    ZScoreNormalized,
)
from medfm.data.transforms.stain import MacenkoNormalized
from medfm.registry import Registry

KEY = "image"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # medfm's loaders give RAS affines
PREPROCESS_STEPS: Registry[Callable[..., MapTransform]] = Registry("preprocess step")


class PreprocessError(ConfigError):
    """A ``data.preprocess`` entry names an unknown step or passes it a bad argument."""


class _Above:
    """Picklable foreground test ``x > threshold`` (DataLoader workers may pickle transforms)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold


class SlicesFirstd(MapTransform):
    """Volumes ``(C, X, Y, Z)`` -> ``(C, Z, X, Y)``: the slice axis first, as 3D backbones
    expect ``(C, D, H, W)``; 2D images pass unchanged."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].ndim == 4:
                d[key] = d[key].permute(0, 3, 1, 2)
        return d


class ResizeToModeld(MapTransform):
    """Resize 2D images to ``(size, size)`` and volumes ``(C, X, Y, Z)`` to
    ``(size, size, depth or size)``: the classic whole-image recipe. MONAI ``Resize`` with
    ``area`` interpolation (no zero-padded anti-aliasing blur, which darkens borders)."""

    def __init__(self, keys: str, size: int, depth: int | None = None) -> None:
        super().__init__(keys)
        self.size, self.depth = int(size), depth

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            shape = (self.size,) * (img.ndim - 1)
            if img.ndim == 4:
                shape = (self.size, self.size, int(self.depth or self.size))
            d[key] = Resize(shape, mode="area")(img)
        return d


@PREPROCESS_STEPS.register("resize_to_model")
def resize_to_model(size: int, depth: int | None = None) -> MapTransform:
    """:class:`ResizeToModeld`: the whole image squeezed to the model's input size."""
    return ResizeToModeld(KEY, size, depth)


@PREPROCESS_STEPS.register("orientation")
def orientation(axcodes: str = "RAS") -> MapTransform:
    """MONAI ``Orientationd``: reorient volumes to ``axcodes`` (from their RAS affine)."""
    return Orientationd(KEY, axcodes=axcodes, labels=RAS_LABELS)


@PREPROCESS_STEPS.register("spacing")
def spacing(pixdim: Sequence[float], mode: str = "bilinear") -> MapTransform:
    """MONAI ``Spacingd``: resample to ``pixdim`` mm (one value per spatial axis)."""
    return Spacingd(KEY, pixdim=list(pixdim), mode=mode, dtype=torch.float32)


@PREPROCESS_STEPS.register("hu_window")
def hu_window(window: str | Sequence[float] = "soft_tissue") -> MapTransform:
    """:class:`~medfm.data.transforms.intensity.HounsfieldWindowd`: a preset name or ``[level,
    width]``."""
    return HounsfieldWindowd(KEY, window=window if isinstance(window, str) else tuple(window))


@PREPROCESS_STEPS.register("multi_window")
def multi_window(windows: Sequence = ("soft_tissue", "lung", "bone")) -> MapTransform:
    """:class:`~medfm.data.transforms.intensity.MultiWindowStackd`: one output channel per
    window."""
    return MultiWindowStackd(KEY, presets=[w if isinstance(w, str) else tuple(w) for w in windows])


@PREPROCESS_STEPS.register("crop_foreground")
def crop_foreground(threshold: float = 0.0, margin: int = 0) -> MapTransform:
    """MONAI ``CropForegroundd``: crop to the box of voxels above ``threshold`` (+ ``margin``).
    Run it after windowing or normalisation, where air is at the minimum."""
    return CropForegroundd(KEY, source_key=KEY, select_fn=_Above(threshold), margin=margin)


@PREPROCESS_STEPS.register("scale_range")
def scale_range(
    a_min: float, a_max: float, b_min: float = 0.0, b_max: float = 1.0, clip: bool = True
) -> MapTransform:
    """MONAI ``ScaleIntensityRanged``: map ``[a_min, a_max]`` linearly to ``[b_min, b_max]``."""
    return ScaleIntensityRanged(
        KEY, a_min=float(a_min), a_max=float(a_max), b_min=b_min, b_max=b_max, clip=clip
    )


@PREPROCESS_STEPS.register("percentile")
def percentile(lower: float = 1.0, upper: float = 99.0, clip: bool = True) -> MapTransform:
    """:class:`~medfm.data.transforms.intensity.PercentileNormalized`: percentiles to ``[0, 1]``."""
    return PercentileNormalized(KEY, lower=lower, upper=upper, clip=clip)


@PREPROCESS_STEPS.register("zscore")
def zscore(nonzero: bool = True) -> MapTransform:
    """:class:`~medfm.data.transforms.intensity.ZScoreNormalized`: zero mean, unit variance; with
    ``nonzero`` the statistics come from the foreground (non-zero voxels) only."""
    return ZScoreNormalized(KEY, nonzero=nonzero)


@PREPROCESS_STEPS.register("macenko")
def macenko(Io: float = 240.0, alpha: float = 1.0, beta: float = 0.15) -> MapTransform:  # noqa: N803
    """:class:`~medfm.data.transforms.stain.MacenkoNormalized`: H&E stain normalisation of RGB
    tiles."""
    return MacenkoNormalized(KEY, Io=Io, alpha=alpha, beta=beta)


@PREPROCESS_STEPS.register("center_slice")
def center_slice(axis: int = -1) -> MapTransform:
    """:class:`~medfm.data.transforms.geometry.CenterSliced`: a volume ``(C, X, Y, Z)`` becomes
    its middle 2D slice along spatial ``axis`` (-1: axial for RAS), for 2D encoders on 3D data."""
    return CenterSliced(KEY, axis)


@PREPROCESS_STEPS.register("resize")
def resize(size: int | Sequence[int], mode: str = "area") -> MapTransform:
    """MONAI ``Resized`` to ``size`` (in the stored axis order; one int for every axis).
    Changes the aspect ratio: prefer ``spacing`` + ``data.patch`` for volumes."""
    return Resized(KEY, spatial_size=size, mode=mode)


def _fail(key: str, index: int, step: Any, message: str) -> PreprocessError:
    return PreprocessError(f"{key}[{index}] {step!r}: {message}")


def _arguments(key: str, index: int, step: Any) -> tuple[str, dict]:
    if isinstance(step, DictConfig):
        step = OmegaConf.to_container(step, resolve=True)
    if isinstance(step, str):
        step = {"name": step}
    if not isinstance(step, Mapping) or "name" not in step:
        raise _fail(key, index, step, "each step is a mapping like {name: zscore, nonzero: true}")
    args = dict(step)
    return str(args.pop("name")), args


def step_arguments(registry: Registry, key: str, index: int, step: Any):
    """Build entry ``index`` of the step list ``key`` through ``registry``; raises
    :class:`PreprocessError` naming the step and the nearest valid name, or its valid
    arguments."""
    name, args = _arguments(key, index, step)
    if name not in registry:
        near = difflib.get_close_matches(name, registry.names(), n=1, cutoff=0.4)
        hint = f"did you mean {near[0]!r}? " if near else ""
        known = ", ".join(registry.names())
        raise _fail(key, index, name, f"unknown step; {hint}known: {known}")
    factory = registry.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise _fail(
            key, index, name, f"unknown argument {unknown[0]!r}; it takes {', '.join(params)}"
        )
    try:
        return factory(**args)
    except (TypeError, ValueError, KeyError) as err:
        raise _fail(key, index, name, f"{err} (it takes {', '.join(params)})") from None


def build_step(index: int, step: Any) -> MapTransform:
    """Entry ``index`` of ``data.preprocess`` as its transform."""
    return step_arguments(PREPROCESS_STEPS, "data.preprocess", index, step)


def classic_preprocess(data_cfg: DictConfig) -> list[dict]:
    """The steps meant by ``data.preprocess: null``: intensity range to [0, 1], then resize."""
    size, depth = int(data_cfg.image_size), data_cfg.get("depth_size")
    return [
        {
            "name": "scale_range",
            "a_min": float(data_cfg.intensity_min),
            "a_max": float(data_cfg.intensity_max),
        },
        {"name": "resize_to_model", "size": size, "depth": None if depth is None else int(depth)},
    ]


def _step_list(data_cfg: DictConfig) -> list[dict]:
    """``data.preprocess`` as plain ``{name: ..., **arguments}`` mappings, ``null`` expanded."""
    steps = data_cfg.get("preprocess")
    if steps is None:
        steps = classic_preprocess(data_cfg)
    elif not isinstance(steps, list | ListConfig):
        raise PreprocessError("data.preprocess must be a list of steps, e.g. [{name: zscore}]")
    named = [_arguments("data.preprocess", i, step) for i, step in enumerate(steps)]
    return [{"name": name, **args} for name, args in named]


def resolve_preprocess(data_cfg: DictConfig) -> list[dict]:
    """``data.preprocess`` as a plain list of step mappings, ``null`` expanded; every step is
    built once so an unknown name or bad argument fails here, before any image is read."""
    steps = _step_list(data_cfg)
    for index, step in enumerate(steps):
        build_step(index, step)
    return steps


def preprocess_transforms(data_cfg: DictConfig) -> list[MapTransform]:
    """The deterministic transforms of ``data.preprocess``, then :class:`SlicesFirstd`."""
    steps = _step_list(data_cfg)
    return [build_step(i, step) for i, step in enumerate(steps)] + [SlicesFirstd(KEY)]


def check_same_preprocess(trained: DictConfig, requested: DictConfig, encoder: str) -> None:
    """Raise when a downstream command asks for other ``data.preprocess`` steps than the encoder
    was trained with: features of differently preprocessed images would be silently wrong.
    ``requested.preprocess: null`` (the default) means "the encoder's own" and always passes."""
    if requested.get("preprocess") is None:
        return
    mine, theirs = resolve_preprocess(trained), resolve_preprocess(requested)
    if mine != theirs:
        raise PreprocessError(
            f"{encoder} was pre-trained with data.preprocess={mine}, but this command asks for "
            f"{theirs}; drop the data.preprocess override (downstream commands apply the "
            "encoder's own steps) or pre-train with the steps you want"
        )
