"""Batched feature extraction: a dataset of samples -> a ``(n, d)`` float32 array.

Consecutive samples of one shape share a batch; a change of shape (a manifest that mixes 2D
images and 3D volumes, embedded by one Uni4Eye ``unified_*`` encoder) starts a new batch, so
mixed manifests are embedded in their order without padding.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import Dataset
from torch import nn
from tqdm.auto import tqdm

from medfm.data.datasets import load_image
from medfm.models.backbones import encode


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    pooling: str = "mean",
    batch_size: int = 128,
    progress: bool = True,
) -> np.ndarray:
    """Run ``model`` in eval mode over ``dataset`` in order; pooled features ``(n, d)``."""
    model.eval()
    device = next(model.parameters()).device
    chunks: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        images = torch.stack(batch).to(device)
        chunks.append(encode(model, images, pooling).float().cpu().numpy())
        batch.clear()

    for i in tqdm(range(len(dataset)), desc="features", unit="image", disable=not progress):
        image = load_image(dataset, i)
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            flush()
        batch.append(image)
    if batch:
        flush()
    return np.concatenate(chunks)
