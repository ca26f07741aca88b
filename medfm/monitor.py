"""Online monitors: while pre-training, measure what the encoder already represents.

Every ``train.monitor_every`` steps, features of a labelled held-out set (the val split) and of a
reference set (train split, at most ``max_reference`` images) give kNN accuracy and, when a
center column exists, the robustness index (de Jong et al. 2025). Existing tools only measure
robustness after training; here it is a curve in MLflow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from omegaconf import DictConfig

from medfm.data.datasets import build_dataset, rows_for_split
from medfm.features.extract import extract_features
from medfm.heads.knn import KNNHead
from medfm.robustness.index import robustness_index
from medfm.train.distributed import DistInfo


def _labelled(rows: list[dict], split: str, limit: int, seed: int) -> list[dict]:
    chosen = [r for r in rows_for_split(rows, split) if r.get("label", "") != ""]
    if len(chosen) > limit:
        keep = np.random.default_rng(seed).choice(len(chosen), limit, replace=False)
        chosen = [chosen[i] for i in sorted(keep)]
    return chosen


def make_monitor(
    encoder: torch.nn.Module,
    rows: list[dict],
    cfg: DictConfig,
    info: DistInfo,
    max_reference: int = 1000,
    max_heldout: int = 500,
) -> Callable[[int], dict] | None:
    """A ``monitor(step) -> {"knn_acc": ..., "robustness_index": ...}``, or None without labels."""
    reference = _labelled(rows, "train", max_reference, int(cfg.seed))
    heldout = _labelled(rows, "val", max_heldout, int(cfg.seed))
    if not reference or not heldout:
        return None
    data_cfg = cfg.data.copy()
    data_cfg.cache = "memory" if data_cfg.cache == "persistent" else data_cfg.cache
    ref_ds, held_ds = build_dataset(reference, data_cfg), build_dataset(heldout, data_cfg)
    y_ref = np.array([r["label"] for r in reference])
    y_held = np.array([r["label"] for r in heldout])
    centers = np.array([r.get("center", "") for r in heldout])
    groups = np.array([r.get("patient", "") for r in heldout])

    def monitor(step: int) -> dict:
        was_training = encoder.training
        pooling = str(cfg.model.pooling)
        f_ref = extract_features(encoder, ref_ds, pooling, progress=False)
        f_held = extract_features(encoder, held_ds, pooling, progress=False)
        encoder.train(was_training)
        head = KNNHead(ks=(20,)).fit(f_ref, y_ref)
        out = {"knn_acc": float(np.mean(head.predict(f_held) == y_held))}
        if (centers != "").all() and len(set(centers)) > 1 and len(set(y_held)) > 1:
            k = min(
                int(cfg.robustness.k),
                len(heldout) - 1 - np.bincount(np.unique(groups, return_inverse=True)[1]).max() + 1,
            )
            if k >= 1:
                out["robustness_index"] = robustness_index(
                    f_held, y_held, centers, k=k, variant="ratio", groups=groups
                )
        return out

    return monitor
