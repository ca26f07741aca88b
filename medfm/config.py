"""Configuration: built-in defaults <- YAML recipe <- dotted command-line overrides.

Every key a recipe or an override may set exists in :data:`DEFAULTS`; an unknown key is an error
that names the key and the nearest valid one, so a typo never silently does nothing.

Example:
    >>> cfg = load_config(None, ["train.max_steps=5", "seed=3"])
    >>> cfg.train.max_steps, cfg.seed
    (5, 3)
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medfm.io import write_text

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "out_dir": "runs/default",
    "data": {
        "manifest": None,  # path to an ingested manifest.csv
        "path": None,  # or a MedMNIST .npz used directly, with its official splits
        "shards": None,  # folder or fsspec URL (s3://...) written by `medfm shard`
        "image_size": 32,  # images are resized to image_size x image_size
        "depth_size": None,  # slices D of 3D volumes (vit3d_*/unified_*); null: image_size
        "channels": 1,  # null: found from the first image
        "intensity_min": 0.0,  # stored intensities mapped linearly from [min, max] to [0, 1]
        "intensity_max": 255.0,
        # ordered named steps (medfm.data.transforms.preprocess); null: scale intensity_min/max to
        # [0, 1]
        # and resize to image_size. Saved resolved in the encoder's config.yaml.
        "preprocess": None,
        "patch": {"size": None, "samples_per_volume": 1},  # random crops instead of a resize
        "augment": [],  # random steps on each patch in pre-training (medfm.data.transforms.augment)
        "cache": "auto",  # "none" | "memory" | "persistent" (on disk) | "auto" (memory if it fits)
        "cache_dir": None,  # folder for the "persistent" cache (default: out_dir/cache)
        "cache_budget_gb": 4.0,  # "auto": memory only while the cached images fit this budget
        "num_workers": 0,  # DataLoader worker processes that decode and preprocess
        "prefetch_factor": 2,  # batches each worker prepares ahead
    },
    "model": {
        "name": "vit_tiny_patch16_224",  # any timm ViT; size is adapted below
        "patch_size": 4,
        "depth": 6,  # null keeps the timm default
        "pooling": "mean",  # "mean" of patch tokens or "cls"
        "stem": "patch",  # "patch" (timm's patchify) or "conv" (Xiao et al. 2021), 2D only
        "pretrained": None,  # a local timm weights file (.safetensors/.pth); never downloaded
    },
    "ssl": {
        "objective": "mae",
        "mask_ratio": 0.75,
        "decoder_dim": 128,
        "decoder_depth": 2,
        "decoder_heads": 4,
        "norm_pix_loss": True,
        "gradient_target": False,  # MAE: also reconstruct the gradient-magnitude map (Uni4Eye)
        "gradient_weight": 1.0,  # loss = pixel loss + gradient_weight * gradient loss
        # contrastive objectives (simclr, dino, hybrid, metadata): views
        "crop_scale": [0.4, 1.0],  # area fraction of the (global) crops
        "flip_prob": 0.5,
        "brightness": 0.2,  # additive shift U(-b, b) on [0, 1] images
        "contrast": 0.2,  # factor U(1 - c, 1 + c) around the image mean
        "gamma": 0.2,  # exponent log-uniform in [1 / (1 + g), 1 + g]
        "jitter_prob": 0.8,
        "blur_sigma": [0.1, 1.5],  # pixels of the view
        "blur_prob": 0.5,
        "noise_std": 0.05,
        "noise_prob": 0.5,
        "random_field_strength": 0.0,  # > 0 adds RandFieldIntensity (Mansfield et al. 2023)
        "random_field_length_scale": 8.0,
        # simclr, hybrid, metadata
        "temperature": 0.2,
        "proj_dim": 128,
        "proj_hidden_dim": 512,
        # dino
        "dino_out_dim": 1024,
        "dino_hidden_dim": 512,
        "dino_bottleneck_dim": 128,
        "n_local_crops": 4,
        "local_crop_size": 16,  # a multiple of model.patch_size, at most data.image_size
        "local_crop_scale": [0.05, 0.4],
        "teacher_temp": 0.04,
        "student_temp": 0.1,
        "center_momentum": 0.9,
        "ema_momentum": 0.996,  # teacher EMA momentum at step 0 ...
        "ema_momentum_end": 1.0,  # ... rising along a cosine to this ...
        "ema_schedule_steps": "${train.max_steps}",  # ... at this step (null: constant)
        # dinov2 (Oquab et al. 2023): the dino keys above + iBOT masked patches + KoLeo
        "ibot_weight": 1.0,  # loss = dino + ibot_weight * iBOT + koleo_weight * KoLeo
        "koleo_weight": 0.1,  # DINOv2's 0.1
        "ibot_mask_prob": 0.5,  # a global crop is block-masked with this probability ...
        "ibot_mask_ratio": [0.1, 0.5],  # ... at a masked fraction uniform in [low, high]
        "ibot_separate_head": False,  # iBOT's own head (false: shares the DINO head)
        "dinov2_centering": "centering",  # teacher: centering (EMA centre) | sinkhorn_knopp
        "sinkhorn_iterations": 3,  # Sinkhorn-Knopp iterations (dinov2_centering=sinkhorn_knopp)
        # cae (Chen et al. 2022): mask_ratio, decoder_*, norm_pix_loss as MAE; block masks
        "cae_regressor_depth": 2,  # cross-attention blocks predicting masked latents
        "cae_align_weight": 2.0,  # loss = pixel reconstruction + cae_align_weight * alignment
        "cae_target": "stop_gradient",  # alignment target: stop_gradient (encoder) | ema (ema_*)
        # hybrid: weight_mim * MAE + weight_contrastive * InfoNCE
        "weight_mim": 1.0,
        "weight_contrastive": 1.0,
        # metadata: y-aware InfoNCE on batch[meta_key], kernel width in metadata units
        "meta_key": "meta",
        "meta_sigma": 1.0,
        # sit (Atito et al. 2021): GMML corruption of groups of patches; rotation, contrastive
        # and whole-image L1 reconstruction terms (medfm.ssl.sit)
        "sit_corrupt_ratio": 0.5,  # fraction of patches corrupted per view, in groups
        "sit_max_group": 0.5,  # largest group side, as a fraction of the patch grid's side
        "sit_corrupt_probs": [0.4, 0.4, 0.2],  # a group gets noise / another image / zeros
        "sit_weighting": "uncertainty",  # learned (Kendall et al. 2018), or "fixed": sit_weights
        "sit_weights": [1.0, 1.0, 1.0],  # fixed weights of rotation, contrastive, reconstruction
        "sit_corrupted_weight": 1.0,  # L1 weight of corrupted pixels (others 1)
        # anatcl (Barbano et al. 2024): kernel over several descriptor columns (medfm.ssl.anatcl)
        "meta_keys": None,  # manifest columns, e.g. [age, gm_volume]; null: [meta_key]
        "anatcl_variant": "global",  # one kernel on the descriptor vector, or "local": one each
        "anatcl_sigma": 1.0,  # kernel width in standard deviations
        "anatcl_standardize": "dataset",  # z-score over the train rows, "batch" or "none"
        "anatcl_age_key": None,  # e.g. age: its own y-Aware term, L = L_anat + w * L_age
        "anatcl_age_weight": 1.0,  # w, the age term's weight
        # views of simclr, dino, hybrid, metadata, anatcl, sit: random-field warp (Mansfield et
        # al. 2023, RandFieldAffine); 0 = off
        "random_field_affine_strength": 0.0,
        "random_field_affine_length_scale": 16.0,  # pixels of the view
    },
    "train": {
        "batch_size": 64,
        "max_steps": 300,
        "max_minutes": None,
        "fit_schedule_to_minutes": True,  # with max_minutes: the cosine ends where time runs out
        "lr": 1.5e-3,
        "min_lr": 1.0e-5,
        "weight_decay": 0.05,
        "betas": [0.9, 0.95],
        "warmup_steps": 30,
        "grad_clip": 1.0,
        "checkpoint_every": 100,
        "log_every": 10,
        "progress": True,
        "grad_accumulation": 1,  # micro-batches per optimiser step (per process)
        "compile": False,  # torch.compile the encoder (views and losses stay eager)
        "grad_checkpointing": False,  # recompute transformer blocks in backward
        "sync_batchnorm": False,  # SyncBatchNorm in projector heads under DDP (CUDA only)
        "monitor_every": 0,  # steps between online monitors (0 = off)
        "monitor_metric": "knn_acc",  # keep out_dir/best.pt by this monitor (higher is better)
        "patience": 0,  # stop after this many monitors without a better monitor_metric (0: off)
    },
    "eval": {
        "heads": ["linear", "knn"],
        "features": "last",  # frozen heads read the last block, or lastN: the last N concatenated
        "knn_k_grid": [5, 10, 20],
        "linear_c_grid": [0.01, 0.1, 1.0, 10.0],
        "batch_size": 128,  # images per feature-extraction batch
        # full | fewshot:K[,K..] | fraction:F[,F..] | loco | incremental:base=C1,C2[;shots=K]
        "protocols": ["full"],
        "seeds": 1,  # repetitions of resampled protocols (and fine-tuning), as mean ± std
        "baselines": True,  # random-init twin and raw-pixel logistic regression in each table
        "bootstrap": 200,  # resamples for the test-AUC 95% CI
    },
    "finetune": {  # the finetune head of `medfm evaluate` (and its model soups)
        "steps": 300,  # optimiser steps at most (early stopping may end sooner)
        "batch_size": 64,
        "lr": 5.0e-4,
        "layer_decay": 0.75,  # layer-wise LR decay (BEiT); 1.0 = none
        "weight_decay": 0.05,
        "warmup_steps": 20,
        "train_blocks": None,  # fine-tune only the last k blocks; null = all
        "augment": True,  # random resized crop + flip of training batches
        "eval_every": 25,  # steps between validation-AUC evaluations
        "patience": 4,  # evaluations without a better val AUC before stopping (0: never)
        "soup_size": 3,  # fine-tuned members (seeds) averaged by the soup head
        # none | dr_tune: the classifier also learns from the calibrated features of a frozen
        # pre-trained copy (DR-Tune, Zhou et al. 2023; the dr_tune head sets it for its row)
        "regularizer": "none",
        "dr_tune_weight": 1.0,  # loss = CE(fine-tuned) + weight * CE(calibrated pre-trained)
        "dr_tune_queue": 1024,  # images in the queues of pre-trained / fine-tuned features
        "dr_tune_rotate": True,  # global alignment: Procrustes rotation + mean shift (else shift)
        "progress": False,
    },
    "robustness": {
        "k": 10,
        "bio_column": "label",
        "center_column": "center",
        "group_column": "patient",
    },
    "tracking": {
        "enabled": True,
        "uri": None,  # MLFLOW_TRACKING_URI, else a sqlite store inside out_dir
        "experiment": "medfm",
        "run_name": None,
        "register_as": None,  # pretrain: register the encoder as a version of this model
        "register_alias": None,  # ... and move this alias (e.g. champion) to it
    },
}


class ConfigError(ValueError):
    """A user-supplied configuration (file or override) is invalid."""


def _check_keys(given: Mapping[str, Any], reference: Mapping[str, Any], source: str) -> None:
    """Raise :class:`ConfigError` for the first key of ``given`` that ``reference`` lacks."""
    valid = flatten(reference)
    for key in flatten(given):
        if key in valid:
            continue
        near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
        hint = (
            f" Did you mean {near[0]!r}?" if near else " See `medfm pretrain --help` and configs/."
        )
        raise ConfigError(f"Unknown config key {key!r} in {source}.{hint}")


def _from_overrides(overrides: Iterable[str]) -> DictConfig:
    items = list(overrides)
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"Override {item!r} must look like key=value, e.g. train.max_steps=50"
            )
    return OmegaConf.from_dotlist(items)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> DictConfig:
    """Merge ``base`` (:data:`DEFAULTS`) <- YAML ``path`` <- ``overrides``; validate keys."""
    reference = dict(base if base is not None else DEFAULTS)
    layers = [OmegaConf.create(reference)]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist; see configs/ for recipes")
        file_cfg = OmegaConf.load(path)
        _check_keys(OmegaConf.to_container(file_cfg), reference, str(path))
        layers.append(file_cfg)
    cli_cfg = _from_overrides(overrides)
    _check_keys(OmegaConf.to_container(cli_cfg), reference, "command-line overrides")
    layers.append(cli_cfg)
    return OmegaConf.merge(*layers)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (:mod:`medfm.io`)."""
    return write_text(OmegaConf.to_yaml(cfg, resolve=True), path)


def flatten(cfg: DictConfig | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (for MLflow params)."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
