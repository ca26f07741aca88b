"""Self-supervised pre-training from a manifest (or a MedMNIST file) to an encoder artifact.

``pretrain(cfg)`` trains ``ssl.objective`` on the train split's images (labels are used only by
the online monitors) and writes ``out_dir/encoder.safetensors`` + ``out_dir/config.yaml``. Under
``torchrun`` it runs data-parallel; only rank 0 logs and writes files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medfm.config import ConfigError, flatten, save_config
from medfm.data.datasets import build_dataset, rows_for_split
from medfm.data.ingestion.manifest import read_manifest
from medfm.data.loader import PatchDataset, StepBatchSampler, step_loader
from medfm.data.shards import ShardDataset, read_index
from medfm.data.sources.medmnist import medmnist_rows
from medfm.data.transforms.augment import augment_steps
from medfm.data.transforms.patches import patch_size, samples_per_volume
from medfm.data.transforms.preprocess import resolve_preprocess
from medfm.models.backbones import create_backbone
from medfm.models.encoder_io import save_encoder
from medfm.ssl import build_objective
from medfm.ssl.anatcl import descriptor_columns, standardize_columns
from medfm.tracking.base import Logger, NullLogger, continue_run
from medfm.train import distributed as D
from medfm.train.checkpoint import CHECKPOINT, checkpoint_tracking
from medfm.train.engine import TrainResult, train
from medfm.train.seed import seed_everything

log = logging.getLogger(__name__)


def load_rows(cfg: DictConfig) -> list[dict]:
    """Manifest rows from ``data.manifest``, or from a MedMNIST ``.npz`` at ``data.path``."""
    if cfg.data.get("path"):
        path = Path(cfg.data.path)
        if not path.is_file():
            raise FileNotFoundError(f"data.path={path} does not exist; pass a MedMNIST .npz")
        rows = medmnist_rows(path)
        for i, row in enumerate(rows):
            row.update(id=str(i), patient=str(i), center="")
        return rows
    if not cfg.data.manifest:
        raise ConfigError(
            "data.manifest is not set; pass data.manifest=<DIR>/manifest.csv "
            "(made by `medfm ingest`) or data.path=<MedMNIST .npz>"
        )
    return read_manifest(cfg.data.manifest)


def infer_channels(cfg: DictConfig, rows: list[dict]) -> DictConfig:
    """Fill ``data.channels: null`` from the first image after ``data.preprocess`` (1 for grey,
    3 for RGB, one per window of ``multi_window``)."""
    if cfg.data.channels is not None:
        return cfg
    from monai.transforms import Compose

    from medfm.data.sources.loading import LoadManifestImaged
    from medfm.data.transforms.preprocess import preprocess_transforms

    steps = Compose([LoadManifestImaged("image"), *preprocess_transforms(cfg.data)])
    channels = int(steps({"image": rows[0]["path"]})["image"].shape[0])
    return OmegaConf.merge(cfg, {"data": {"channels": channels}})


def _with_shard_preprocess(cfg: DictConfig) -> DictConfig:
    """With ``data.shards``, the steps and channels the shards were written with."""
    if not cfg.data.get("shards"):
        return cfg
    index = read_index(cfg.data.shards)
    if cfg.data.preprocess is not None and resolve_preprocess(cfg.data) != index["preprocess"]:
        raise ConfigError(
            f"data.shards={cfg.data.shards} were written with data.preprocess="
            f"{index['preprocess']}, not {resolve_preprocess(cfg.data)}; rewrite them with "
            "`medfm shard` or drop the data.preprocess setting"
        )
    return OmegaConf.merge(
        cfg, {"data": {"preprocess": index["preprocess"], "channels": index["channels"]}}
    )


def resolve_data(cfg: DictConfig, rows: list[dict]) -> DictConfig:
    """``data.preprocess`` written out as the steps it means (checked now, before any image is
    read), channels filled in, and a default persistent-cache folder inside ``out_dir``."""
    cfg = _with_shard_preprocess(cfg)
    cfg = OmegaConf.merge(cfg, {"data": {"preprocess": resolve_preprocess(cfg.data)}})
    augment_steps(cfg.data)  # a bad data.augment step fails now too
    if not cfg.data.get("cache_dir"):
        cfg.data.cache_dir = str(Path(cfg.out_dir) / "cache")
    size = patch_size(cfg.data)
    if size is not None:  # the backbone's input is the patch
        if len(size) not in (2, 3) or size[-1] != size[-2]:
            raise ConfigError(
                f"data.patch.size={list(size)}: give [H, W] or [D, H, W] with H == W "
                "(the backbones take square slices)"
            )
        cfg.data.image_size = size[-1]
        cfg.data.depth_size = size[0] if len(size) == 3 else None
    return infer_channels(cfg, rows)


def _train_rows(rows: list[dict], cfg: DictConfig) -> list[dict]:
    train_rows = rows_for_split(rows, "train") or rows
    if rows and len(train_rows) < int(cfg.train.batch_size):
        log.warning(
            "Only %d training images for batch size %d", len(train_rows), cfg.train.batch_size
        )
    return train_rows


def _metadata(rows: list[dict], cfg: DictConfig) -> dict[str, torch.Tensor]:
    """The continuous metadata columns per train row, by name: ``ssl.meta_key`` (e.g. age) for
    ``ssl.objective=metadata``, ``ssl.meta_keys`` for ``anatcl`` (z-scored over the train rows
    and ``ssl.anatcl_age_key``, z-scored over the train rows when
    ``ssl.anatcl_standardize=dataset``); none for the other objectives."""
    objective = str(cfg.ssl.objective)
    if objective == "metadata":
        keys, setting = [str(cfg.ssl.meta_key)], "ssl.meta_key"
    elif objective == "anatcl":
        keys, setting = descriptor_columns(cfg.ssl), "ssl.meta_keys or ssl.anatcl_age_key"
    else:
        return {}
    columns = {}
    for key in keys:
        try:
            values = torch.tensor([float(r[key]) for r in rows], dtype=torch.float32)
        except (KeyError, ValueError):
            values = None
        if values is None or not torch.isfinite(values).all():
            raise ConfigError(
                f"ssl.objective={objective} needs a numeric manifest column {key!r} on "
                f"every train row; add it (`medfm ingest --labels CSV --label-columns {key}`) or "
                f"set {setting}"
            )
        if objective == "anatcl" and cfg.ssl.anatcl_standardize == "dataset":
            values = standardize_columns(values[:, None])[:, 0]
        columns[key] = values
    return columns


def _spatial_dims(shape: str) -> int:
    sides = [int(v) for v in shape.split("x") if v.isdigit()]
    return 2 if len(sides) == 3 and sides[-1] in (3, 4) else len(sides)


def dimensionality_groups(rows: list[dict]) -> np.ndarray | None:
    """Spatial axes per row (2 or 3, from the manifest's ``shape``) when the rows mix 2D and 3D
    images, so that every batch holds one kind (a unified encoder, Uni4Eye); else None. A shape
    ``HxWx3`` (or ``x4``) is an RGB(A) image, as ingestion writes colour tiles."""
    dims = np.array([_spatial_dims(str(r.get("shape") or "")) for r in rows])
    return dims if len(np.unique(dims)) > 1 else None


def _batches(rows: list[dict], meta: dict[str, torch.Tensor], cfg: DictConfig, info: D.DistInfo):
    """``batches(start)``: this rank's batch for each step from ``start``, made by a DataLoader
    with ``data.num_workers`` workers over the train rows (random patches when ``data.patch``)."""
    if cfg.data.get("shards"):
        if meta:
            raise ConfigError(
                f"ssl.objective={cfg.ssl.objective} reads manifest columns; use data.manifest"
            )
        images = ShardDataset(cfg.data.shards)
    else:
        images = build_dataset(rows, cfg.data, whole_image=False)
    dataset = PatchDataset(
        images,
        patch_size(cfg.data),
        samples_per_volume(cfg.data),
        meta or None,
        augment_steps(cfg.data),
    )
    workers = int(cfg.data.get("num_workers") or 0)
    groups = dimensionality_groups(rows) if not cfg.data.get("shards") else None

    def batches(start: int):
        sampler = StepBatchSampler(
            len(dataset),
            int(cfg.train.batch_size),
            int(cfg.seed),
            start,
            int(cfg.train.max_steps),
            info.rank,
            info.world_size,
            groups,
        )
        pin = info.device.type == "cuda"
        return step_loader(dataset, sampler, workers, pin, int(cfg.data.prefetch_factor))

    return batches


Monitor = Callable[[int], dict]
MonitorFactory = Callable[[torch.nn.Module, list[dict], DictConfig, D.DistInfo], Monitor | None]


def pretrain(
    cfg: DictConfig, logger: Logger | None = None, monitor: MonitorFactory | None = None
) -> tuple[Path, TrainResult]:
    """Train and save the encoder; returns ``(out_dir, result)``.

    ``monitor(encoder, rows, cfg, info)`` builds the online monitor run every
    ``train.monitor_every`` steps; it is handed in by the layer above (:func:`medfm.pretrain`
    passes :func:`medfm.monitor.make_monitor`), so training imports nothing from evaluation.
    """
    info = D.init_distributed()
    logger = logger if info.is_main and logger is not None else NullLogger()
    rows = [] if cfg.data.get("shards") and not cfg.data.manifest else load_rows(cfg)
    cfg = resolve_data(cfg, rows)
    out_dir = Path(cfg.out_dir)
    if info.is_main:
        continue_run(logger, checkpoint_tracking(out_dir / CHECKPOINT))  # the resumed run's
        save_config(cfg, out_dir / "config.yaml")
        logger.log_params(flatten(cfg))
        logger.log_artifact(out_dir / "config.yaml")
    seed_everything(int(cfg.seed))
    train_rows = _train_rows(rows, cfg)
    meta = _metadata(train_rows, cfg)
    encoder = create_backbone(
        cfg.model, cfg.data.image_size, cfg.data.channels, cfg.data.get("depth_size")
    )
    objective = build_objective(encoder, cfg.ssl, str(cfg.model.pooling))
    torch.manual_seed(int(cfg.seed) + 1000 * info.rank)
    batches = _batches(train_rows, meta, cfg, info)
    if cfg.train.monitor_every and monitor is None:
        log.warning("train.monitor_every is set but no monitor was given: use medfm.pretrain")
    watch = monitor(encoder, rows, cfg, info) if cfg.train.monitor_every and monitor else None
    result = train(objective, batches, cfg, out_dir, logger, watch, info)
    if info.is_main:
        save_encoder(encoder.cpu(), cfg, out_dir)
        logger.log_metrics(
            {
                "pretrain/final_loss": result.final_loss,
                "pretrain/images_per_second": result.images_per_second,
            },
            step=result.steps,
        )
        logger.log_artifact(out_dir / "encoder.safetensors", "encoder")
        logger.log_artifact(out_dir / "config.yaml", "encoder")
    D.barrier(info)
    return out_dir, result
