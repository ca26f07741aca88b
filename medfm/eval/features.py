"""Batched feature extraction: a dataset of samples -> a ``(n, d)`` float32 array."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import Dataset
from torch import nn
from tqdm.auto import tqdm

from medfm.data.datasets import stack_images
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
    chunks = []
    for start in tqdm(
        range(0, len(dataset), batch_size), desc="features", unit="batch", disable=not progress
    ):
        images = stack_images(dataset, range(start, min(start + batch_size, len(dataset))))
        chunks.append(encode(model, images.to(device), pooling).float().cpu().numpy())
    return np.concatenate(chunks)
