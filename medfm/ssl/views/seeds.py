"""Per-sample seeds of the views: every random number of a sample comes from its own seed.

The views take ``sample_seeds``, a ``(B,)`` integer tensor (the engine's ``batch["sample_seed"]``);
each augmentation step of each view draws from its own stream of that seed (:func:`mix_seeds`),
so a sample's views do not depend on the other samples of its batch. Without ``sample_seeds``
the draws come from the global torch RNG. See :mod:`medfm.ssl.views`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from medfm.ssl.masking import per_sample_uniform

# streams of one view's seed, one per augmentation step: a step's draws do not shift another's
_CROP, _FIELD, _JITTER, _BLUR, _NOISE, _NOISE_IMAGE = range(1, 7)
_FIELD_AFFINE = 7
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
