"""Fine-tuning an encoder end to end on a labelled task, with the pre-training engine.

A :class:`FineTuneClassifier` (encoder + a zero-initialised linear layer on the pooled features)
is an *objective* for :func:`medfm.train.engine.train`: it maps a batch to a cross-entropy loss.
So fine-tuning gets the engine's AdamW (no decay on norms and biases), warmup + cosine schedule,
gradient clipping, atomic checkpoints and exact resume for free. Three things are specific:

* **Layer-wise LR decay** (BEiT, Bao et al. 2022; used by MAE's fine-tuning recipe): block ``i``
  of ``L`` learns at ``lr * decay ** (L + 1 - i)``, the patch embedding at ``decay ** (L + 1)``,
  the final norm and the classifier at ``lr``. The engine reads :meth:`lr_scale`.
* **Early stopping on validation AUC**: the engine's monitor computes it every
  ``finetune.eval_every`` steps, keeps the best weights and stops after ``finetune.patience``
  evaluations without improvement; :func:`fine_tune` returns those best weights.
* **A regulariser** (``finetune.regularizer``): ``none``, or ``dr_tune``
  (:mod:`medfm.heads.dr_tune`, Zhou et al., ICCV 2023): the classifier also learns from the
  calibrated features of a frozen copy of the pre-trained encoder, weighted by
  ``finetune.dr_tune_weight``. Its queues are buffers of the classifier, so the engine's
  checkpoints and exact resume cover them; the frozen copy is neither trained nor saved.

The classifier is zero-initialised so that every fine-tuned member starts from the same weights,
which model soups (:mod:`medfm.heads.soups`) need.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import Dataset
from omegaconf import DictConfig
from torch import nn

from medfm.config import load_config
from medfm.data.datasets import stack_images
from medfm.data.loader import in_memory_batches
from medfm.heads.dr_tune import DRTune
from medfm.metrics.scores import auc
from medfm.models.backbones import encode
from medfm.ssl.views import random_resized_crop
from medfm.train.checkpoint import load_checkpoint
from medfm.train.distributed import init_distributed
from medfm.train.engine import train

_BLOCK = re.compile(r"^encoder\.blocks\.(\d+)\.")
_EMBED = ("encoder.patch_embed", "encoder.cls_token", "encoder.pos_embed", "encoder.reg_token")
REGULARIZERS = ("none", "dr_tune")


class FineTuneClassifier(nn.Module):
    """Encoder + linear classifier; ``forward(batch)`` -> ``{"loss": cross-entropy}``.

    Args:
        encoder: a timm ViT or :class:`~medfm.models.vit3d.ViT3D` (``forward_features``).
        n_classes: number of classes; ``batch["target"]`` holds class indices.
        pooling: ``"mean"`` of patch tokens or ``"cls"``.
        train_blocks: fine-tune only the last ``train_blocks`` transformer blocks (and the final
            norm and classifier); ``None`` fine-tunes everything.
        layer_decay: the layer-wise LR decay factor (1.0: none).
        augment: random resized crop (area 0.6-1) and horizontal flip of training batches.
        regularizer: ``"none"`` or ``"dr_tune"`` (a frozen copy of ``encoder`` as it is now
            regularises the classifier, :class:`~medfm.heads.dr_tune.DRTune`).
        dr_tune_weight: weight of DR-Tune's term on the calibrated pre-trained features.
        dr_tune_queue: images kept in DR-Tune's feature queues.
        dr_tune_rotate: DR-Tune's global alignment includes the Procrustes rotation.

    ``forward`` returns ``{"loss"}``; with DR-Tune also ``{"ce", "dr"}``, the two terms.
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_classes: int,
        pooling: str = "mean",
        train_blocks: int | None = None,
        layer_decay: float = 0.75,
        augment: bool = True,
        regularizer: str = "none",
        dr_tune_weight: float = 1.0,
        dr_tune_queue: int = 1024,
        dr_tune_rotate: bool = True,
    ) -> None:
        super().__init__()
        if regularizer not in REGULARIZERS:
            raise ValueError(
                f"finetune.regularizer={regularizer!r}: choose one of {', '.join(REGULARIZERS)}"
            )
        self.encoder, self.pooling = encoder, pooling
        self.layer_decay, self.augment = float(layer_decay), augment
        self.depth = len(getattr(encoder, "blocks", []))
        dim = int(encoder.num_features)
        self.head = nn.Linear(dim, n_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.dr_tune_weight = float(dr_tune_weight)
        self.dr_tune = (  # copied before any freezing or step: the pre-trained weights
            DRTune(encoder, n_classes, pooling, int(dr_tune_queue), bool(dr_tune_rotate))
            if regularizer == "dr_tune"
            else None
        )
        if train_blocks is not None:
            self._freeze_all_but_last(int(train_blocks))

    def _freeze_all_but_last(self, k: int) -> None:
        first_trained = self.depth - k
        for name, param in self.encoder.named_parameters():
            match = _BLOCK.match(f"encoder.{name}")
            in_block = match is not None and int(match[1]) >= first_trained
            is_top = match is None and not f"encoder.{name}".startswith(_EMBED)
            param.requires_grad_(in_block or (is_top and k > 0))

    def _layer(self, name: str) -> int:
        match = _BLOCK.match(name)
        if match:
            return int(match[1]) + 1
        return 0 if name.startswith(_EMBED) else self.depth + 1

    def lr_scale(self, name: str) -> float:
        """Layer-wise LR decay factor of parameter ``name`` (read by the optimiser)."""
        return self.layer_decay ** (self.depth + 1 - self._layer(name))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, n_classes)`` logits of an image batch."""
        return self.head(encode(self.encoder, images, self.pooling))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"image": (B, C, [D,] H, W), "target": (B,)}`` -> ``{"loss": 0-dim cross-entropy}``
        (with DR-Tune: ``ce + dr_tune_weight * dr``, both terms returned too)."""
        images, target = batch["image"], batch["target"]
        if self.training and self.augment:
            images = random_resized_crop(images, tuple(images.shape[2:]), scale=(0.6, 1.0))
        features = encode(self.encoder, images, self.pooling)
        ce = F.cross_entropy(self.head(features), target)
        if self.dr_tune is None or not self.training:
            return {"loss": ce}
        pre = self.dr_tune.pretrained_features(images)  # the same augmented images
        dr = self.dr_tune.regularizer(self.head, features, pre, target)
        return {"loss": ce + self.dr_tune_weight * dr, "ce": ce.detach(), "dr": dr.detach()}

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Images ``(N, C, [D,] H, W)`` -> class probabilities ``(N, n_classes)`` (numpy)."""
        was, device = self.training, self.head.weight.device
        self.eval()
        out = [
            F.softmax(self.logits(images[i : i + batch_size].to(device)), dim=1).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
        self.train(was)
        return torch.cat(out).numpy()


@dataclasses.dataclass
class FineTuneResult:
    """The validation AUC of the kept weights (NaN without a val split), the step they come
    from, and the steps the run took (the returned classifier holds those weights)."""

    val_auc: float
    step: int
    steps_run: int


def _engine_cfg(ft_cfg: DictConfig, seed: int, out_dir: Path, n_train: int) -> DictConfig:
    batch = min(int(ft_cfg.batch_size), n_train)
    return load_config(
        None,
        [
            f"seed={seed}",
            f"out_dir={out_dir}",
            f"train.batch_size={batch}",
            f"train.max_steps={int(ft_cfg.steps)}",
            f"train.lr={float(ft_cfg.lr)}",
            f"train.weight_decay={float(ft_cfg.weight_decay)}",
            f"train.warmup_steps={int(ft_cfg.warmup_steps)}",
            f"train.monitor_every={int(ft_cfg.eval_every)}",
            "train.monitor_metric=val_auc",
            f"train.patience={int(ft_cfg.patience)}",
            f"train.checkpoint_every={int(ft_cfg.eval_every)}",
            f"train.log_every={int(ft_cfg.eval_every)}",
            f"train.progress={bool(ft_cfg.progress)}",
            "train.betas=[0.9,0.999]",
        ],
    )


def fine_tune(
    make_encoder: Callable[[], nn.Module],
    dataset: Dataset,
    labels: np.ndarray,
    classes: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    ft_cfg: DictConfig,
    pooling: str,
    seed: int,
    out_dir: str | os.PathLike,
) -> tuple[FineTuneClassifier, FineTuneResult]:
    """Fine-tune a fresh ``make_encoder()`` on ``dataset[train_idx]``; early-stop on the
    validation AUC of ``dataset[val_idx]``; return the classifier holding the best weights.

    ``labels`` are the dataset's labels (strings), ``classes`` the sorted class names.
    Rerunning with the same ``out_dir`` resumes (the engine's checkpoint), so callers name the
    folder after everything that defines the run. Without a validation split of two classes the
    last weights are kept. Runs on the GPU when there is one.
    """
    out_dir = Path(out_dir)
    model = _classifier(make_encoder, len(classes), ft_cfg, pooling, seed)
    targets = torch.as_tensor(np.searchsorted(classes, labels), dtype=torch.long)
    y_val = np.asarray(labels)[val_idx]
    val_images = stack_images(dataset, val_idx) if len(np.unique(y_val)) > 1 else None

    def get_batch(positions: np.ndarray) -> dict:
        idx = train_idx[positions]
        return {"image": stack_images(dataset, idx), "target": targets[torch.as_tensor(idx)]}

    def monitor(step: int) -> dict:
        return {"val_auc": auc(y_val, model.predict_proba(val_images), classes)}

    cfg = _engine_cfg(ft_cfg, seed, out_dir, len(train_idx))
    info = init_distributed()

    batches = in_memory_batches(
        get_batch,
        len(train_idx),
        int(cfg.train.batch_size),
        int(cfg.seed),
        int(cfg.train.max_steps),
        info.rank,
        info.world_size,
    )
    result = train(
        model,
        batches,
        cfg,
        out_dir,
        monitor=monitor if val_images is not None else None,
        info=info,
    )
    return model.eval(), _keep_best(model, out_dir, result.steps)


def _classifier(
    make_encoder: Callable[[], nn.Module],
    n_classes: int,
    ft_cfg: DictConfig,
    pooling: str,
    seed: int,
) -> FineTuneClassifier:
    encoder = make_encoder()  # the same initial weights for every seed (soups need that) ...
    torch.manual_seed(seed)  # ... while the seed drives augmentation and drop-out
    return FineTuneClassifier(
        encoder,
        n_classes,
        pooling,
        None if ft_cfg.train_blocks is None else int(ft_cfg.train_blocks),
        float(ft_cfg.layer_decay),
        bool(ft_cfg.augment),
        str(ft_cfg.get("regularizer", "none")),
        float(ft_cfg.get("dr_tune_weight", 1.0)),
        int(ft_cfg.get("dr_tune_queue", 1024)),
        bool(ft_cfg.get("dr_tune_rotate", True)),
    )


def _keep_best(model: FineTuneClassifier, out_dir: Path, steps: int) -> FineTuneResult:
    """Load the best validation weights into ``model``; without a validation AUC (no val split
    of two classes) the last weights stay."""
    best = load_checkpoint(out_dir / "best.pt")
    if best is None:
        return FineTuneResult(float("nan"), steps, steps)
    model.load_state_dict(best["model"])
    return FineTuneResult(best["value"], best["step"], steps)
