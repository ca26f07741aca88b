"""Self-supervised pre-training from a manifest to an encoder artifact.

``pretrain(cfg)`` reads ``data.manifest``, trains ``ssl.objective`` on the train split's images
(labels are not used), and writes ``out_dir/encoder.safetensors`` + ``out_dir/config.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from medfm.config import ConfigError, flatten, save_config
from medfm.data.datasets import build_dataset, rows_for_split, stack_images
from medfm.data.manifest import read_manifest
from medfm.models.backbones import build_backbone
from medfm.models.encoder_io import save_encoder
from medfm.ssl.mae import build_objective
from medfm.tracking.base import Logger, NullLogger
from medfm.train.engine import TrainResult, train
from medfm.train.seed import seed_everything

log = logging.getLogger(__name__)


def _train_rows(cfg: DictConfig) -> list[dict]:
    if not cfg.data.manifest:
        raise ConfigError(
            "data.manifest is not set; pass data.manifest=<DIR>/manifest.csv "
            "(made by `medfm ingest`)"
        )
    rows = read_manifest(cfg.data.manifest)
    train_rows = rows_for_split(rows, "train") or rows
    if len(train_rows) < int(cfg.train.batch_size):
        log.warning(
            "Only %d training images for batch size %d", len(train_rows), cfg.train.batch_size
        )
    return train_rows


def pretrain(cfg: DictConfig, logger: Logger | None = None) -> tuple[Path, TrainResult]:
    """Train and save the encoder; returns ``(out_dir, result)``."""
    logger = logger or NullLogger()
    out_dir = Path(cfg.out_dir)
    save_config(cfg, out_dir / "config.yaml")
    logger.log_params(flatten(cfg))
    logger.log_artifact(out_dir / "config.yaml")
    seed_everything(int(cfg.seed))
    dataset = build_dataset(_train_rows(cfg), cfg.data)
    encoder = build_backbone(cfg.model, cfg.data.image_size, cfg.data.channels)
    objective = build_objective(encoder, cfg.ssl)
    torch.manual_seed(int(cfg.seed))

    def get_batch(idx: np.ndarray) -> dict:
        return {"image": stack_images(dataset, idx)}

    result = train(objective, get_batch, len(dataset), cfg, out_dir, logger)
    save_encoder(encoder, cfg, out_dir)
    logger.log_metrics(
        {
            "pretrain/final_loss": result.final_loss,
            "pretrain/images_per_second": result.images_per_second,
        },
        step=result.steps,
    )
    logger.log_artifact(out_dir / "encoder.safetensors", "encoder")
    logger.log_artifact(out_dir / "config.yaml", "encoder")
    return out_dir, result
