"""Batched feature extraction: a dataset of samples -> a ``(n, d)`` float32 array.

Consecutive samples of one shape share a batch; a change of shape (a manifest that mixes 2D
images and 3D volumes, embedded by one Uni4Eye ``unified_*`` encoder) starts a new batch, so
mixed manifests are embedded in their order without padding.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from monai.data import Dataset
from torch import nn
from tqdm.auto import tqdm

from medfm.data.datasets import load_image
from medfm.features.cache import cached_features, feature_key
from medfm.features.encoders import EvalEncoder
from medfm.models.backbones import encode_layers


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    pooling: str = "mean",
    batch_size: int = 128,
    progress: bool = True,
    features: str = "last",
) -> np.ndarray:
    """Run ``model`` in eval mode over ``dataset`` in order; pooled features ``(n, d)`` of the
    last block, or ``(n, k * d)`` of the last ``k`` for ``features="lastK"``
    (:func:`~medfm.models.backbones.encode_layers`)."""
    model.eval()
    device = next(model.parameters()).device
    chunks: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        images = torch.stack(batch).to(device)
        chunks.append(encode_layers(model, images, pooling, features).float().cpu().numpy())
        batch.clear()

    for i in tqdm(range(len(dataset)), desc="features", unit="image", disable=not progress):
        image = load_image(dataset, i)
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            flush()
        batch.append(image)
    if batch:
        flush()
    return np.concatenate(chunks)


DATA_KEYS = ("image_size", "channels", "intensity_min", "intensity_max", "depth_size")


def encoder_features(
    enc: EvalEncoder,
    rows: list[dict],
    dataset: Dataset,
    cache_dir: str | os.PathLike | None,
    progress: bool,
    batch_size: int = 128,
    features: str = "last",
) -> np.ndarray:
    """``(n, d)`` features of every row under ``enc`` (``features``: ``last`` or ``lastK``
    blocks), read from ``cache_dir`` when already there.

    The cache key holds the encoder, its pooling, the block choice (``features``), the data
    settings and the image paths, so
    ``medfm evaluate`` and the robustness audit share entries for the same encoder and data.
    """
    pooling = str(enc.cfg.model.pooling)
    data = {k: enc.cfg.data.get(k) for k in DATA_KEYS}
    key = feature_key(
        enc.key, pooling, data | {"features": str(features)}, [r["path"] for r in rows]
    )

    def compute() -> np.ndarray:
        return extract_features(enc.build(), dataset, pooling, batch_size, progress, features)

    return cached_features(cache_dir, key, compute)
