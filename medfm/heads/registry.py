"""Every downstream head by name: the ``HEADS`` registry and :func:`build_head`.

Each entry says what the head trains on. *Feature* heads (``linear``, ``knn``, ``gda``,
``prototype``, ``mlp``) are scikit-learn estimators fitted on cached features, ``fit(X, y,
X_val=None, y_val=None)``; ``build_head`` makes a fresh one. *Image* heads (``finetune``,
``soup``, ``dr_tune``) fine-tune the encoder itself (:mod:`medfm.heads.finetune`,
:mod:`medfm.heads.soups`, :mod:`medfm.heads.dr_tune`) and are run by
:mod:`medfm.evaluation.images`. ``stochastic`` heads change with the seed, so
``medfm evaluate`` repeats them over ``eval.seeds`` even under the deterministic protocols.

Example:
    >>> from medfm.heads.registry import HEADS, feature_heads
    >>> HEADS.get("finetune").trains_on
    'images'
    >>> feature_heads()
    ['gda', 'knn', 'linear', 'mlp', 'prototype']
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

from medfm.registry import Registry

Builder = Callable[[Any, int], Any]  # (eval_cfg, seed) -> a fresh estimator

# Where each head's estimator lives; imported on first use, so that the registry (and ``medfm
# evaluate --help``, which lists it) loads neither torch nor scikit-learn.
CLASSES = {
    "LinearProbe": "medfm.heads.linear",
    "KNNHead": "medfm.heads.knn",
    "GDAHead": "medfm.heads.gda",
    "PrototypeHead": "medfm.heads.prototype",
    "MLPHead": "medfm.heads.mlp",
}


def head_class(name: str) -> type:
    """The estimator class ``name`` (a key of ``CLASSES``), imported from its module."""
    return getattr(importlib.import_module(CLASSES[name]), name)


@dataclasses.dataclass(frozen=True)
class HeadEntry:
    """One registered head.

    Attributes:
        trains_on: ``"features"`` (an estimator on cached features) or ``"images"`` (fine-tunes
            the encoder).
        build: ``(eval_cfg, seed) -> estimator`` for feature heads; None for image heads.
        stochastic: whether the result depends on the seed.
        summary: one line for ``--help`` and error messages.
    """

    trains_on: Literal["features", "images"]
    build: Builder | None = None
    stochastic: bool = False
    summary: str = ""

    def __call__(self, eval_cfg: Any, seed: int = 0) -> Any:
        """A fresh estimator of this feature head."""
        if self.build is None:
            raise ValueError(
                "image heads fine-tune the encoder and are run by medfm.evaluation.images"
            )
        return self.build(eval_cfg, seed)


HEADS: Registry[HeadEntry] = Registry("head")
HEADS.register("linear")(
    HeadEntry(
        "features",
        lambda cfg, seed: head_class("LinearProbe")(Cs=tuple(cfg.linear_c_grid)),
        summary="logistic regression, C chosen on val (eval.linear_c_grid)",
    )
)
HEADS.register("knn")(
    HeadEntry(
        "features",
        lambda cfg, seed: head_class("KNNHead")(ks=tuple(cfg.knn_k_grid)),
        summary="cosine kNN, temperature-weighted votes, k chosen on val (eval.knn_k_grid)",
    )
)
HEADS.register("gda")(
    HeadEntry(
        "features",
        lambda cfg, seed: head_class("GDAHead")(),
        summary="training-free shared-covariance GDA",
    )
)
HEADS.register("prototype")(
    HeadEntry(
        "features",
        lambda cfg, seed: head_class("PrototypeHead")(),
        summary="cosine class prototypes (TEEN calibration)",
    )
)
HEADS.register("mlp")(
    HeadEntry(
        "features",
        lambda cfg, seed: head_class("MLPHead")(random_state=seed),
        stochastic=True,
        summary="one-hidden-layer MLP, early-stopped on val",
    )
)
HEADS.register("finetune")(
    HeadEntry("images", stochastic=True, summary="end-to-end fine-tuning (finetune.*)")
)
HEADS.register("soup")(
    HeadEntry("images", stochastic=True, summary="uniform and greedy model soups of finetune")
)
HEADS.register("dr_tune")(
    HeadEntry(
        "images",
        stochastic=True,
        summary="fine-tuning regularised by the frozen pre-trained features (DR-Tune, "
        "finetune.dr_tune_*)",
    )
)


def feature_heads() -> list[str]:
    """Names of the heads fitted on features, sorted."""
    return [name for name in HEADS.names() if HEADS.get(name).trains_on == "features"]


def image_heads() -> list[str]:
    """Names of the heads that fine-tune the encoder on images, sorted."""
    return [name for name in HEADS.names() if HEADS.get(name).trains_on == "images"]


def check_heads(heads: Sequence[str]) -> None:
    """Raise ``ValueError`` naming every unknown head and the registered ones."""
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise ValueError(
            f"eval.heads: unknown head(s) {unknown}; choose from {', '.join(HEADS.names())}"
        )


def build_head(name: str, eval_cfg: Any, seed: int = 0) -> Any:
    """A fresh feature head named in ``eval.heads``: the linear probe's C grid and kNN's k grid
    come from ``eval_cfg``; the MLP's initialisation follows ``seed``."""
    check_heads([name])
    return HEADS.get(name)(eval_cfg, seed)


__all__ = [
    "HEADS",
    "HeadEntry",
    "build_head",
    "check_heads",
    "feature_heads",
    "head_class",
    "image_heads",
]
