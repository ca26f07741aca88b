"""Feature sources of one evaluation: the encoder, its random-init twin and raw pixels.

Encoder features are extracted once and cached on disk (:mod:`medfm.features.cache`), keyed by
the encoder, its pooling, the data settings and the images, so every head, protocol and seed,
and a later run on the same data (``medfm demo`` hands them to the robustness audit), reuse them.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch.nn.functional as F

from medfm.data.datasets import load_image
from medfm.features.cache import cached_features, feature_key
from medfm.features.encoders import EvalEncoder
from medfm.features.extract import extract_features

MAX_PIXELS = 4096
DATA_KEYS = ("image_size", "channels", "intensity_min", "intensity_max", "depth_size")


def encoder_features(
    enc: EvalEncoder,
    rows: list[dict],
    dataset,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> np.ndarray:
    """``(n, d)`` features of every row under ``enc``, from ``cache_dir`` when already there."""
    pooling = str(enc.cfg.model.pooling)
    data = {k: enc.cfg.data.get(k) for k in DATA_KEYS}
    key = feature_key(enc.key, pooling, data, [r["path"] for r in rows])

    def compute() -> np.ndarray:
        return extract_features(enc.build(), dataset, pooling, progress=progress)

    return cached_features(cache_dir, key, compute)


def pixel_features(dataset) -> np.ndarray | None:
    """Raw intensities flattened, average-pooled to at most 4096 values per image; None (with a
    warning) when the images differ in shape, e.g. a manifest of 2D images and 3D volumes, where
    raw pixels share no feature space."""
    rows, shape = [], None
    for i in range(len(dataset)):
        image = load_image(dataset, i)
        if shape is not None and tuple(image.shape) != shape:
            warnings.warn("images differ in shape: no pixels: baseline", stacklevel=2)
            return None
        shape = tuple(image.shape)
        pool = F.avg_pool3d if image.ndim == 4 else F.avg_pool2d
        while image.numel() > MAX_PIXELS:
            image = pool(image, 2)
        rows.append(image.flatten().numpy())
    return np.stack(rows).astype(np.float32)


def feature_sources(
    enc: EvalEncoder,
    rows: list[dict],
    dataset,
    baselines: bool,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> dict[str, np.ndarray]:
    """``{row prefix: features}``: ``""`` the encoder; with ``baselines`` also ``"random:"`` (its
    random-init twin, same pooling) and ``"pixels:"`` (raw pixels, when the shapes agree)."""
    sources = {"": encoder_features(enc, rows, dataset, cache_dir, progress)}
    if baselines and enc.twin is not None:
        enc.twin.cfg.model.pooling = enc.cfg.model.pooling
        sources["random:"] = encoder_features(enc.twin, rows, dataset, cache_dir, progress)
    pixels = pixel_features(dataset) if baselines else None
    if pixels is not None:
        sources["pixels:"] = pixels
    return sources
