"""Feature sources of one evaluation: the encoder, its random-init twin and raw pixels.

Encoder features come from :func:`medfm.features.extract.encoder_features`: extracted once and
cached on disk, so every head, protocol and seed, and a later run on the same data (``medfm
demo`` hands them to the robustness audit), reuse them.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch.nn.functional as F

from medfm.data.datasets import load_image
from medfm.features.encoders import EvalEncoder
from medfm.features.extract import encoder_features

MAX_PIXELS = 4096


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
    batch_size: int = 128,
    features: str = "last",
) -> dict[str, np.ndarray]:
    """``{row prefix: features}``: ``""`` the encoder; with ``baselines`` also ``"random:"`` (its
    random-init twin, same pooling and blocks) and ``"pixels:"`` (raw pixels, when the shapes
    agree)."""
    sources = {"": encoder_features(enc, rows, dataset, cache_dir, progress, batch_size, features)}
    if baselines and enc.twin is not None:
        enc.twin.cfg.model.pooling = enc.cfg.model.pooling
        sources["random:"] = encoder_features(
            enc.twin, rows, dataset, cache_dir, progress, batch_size, features
        )
    pixels = pixel_features(dataset) if baselines else None
    if pixels is not None:
        sources["pixels:"] = pixels
    return sources
