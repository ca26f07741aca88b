"""``medfm evaluate`` / ``medfm robustness`` as functions.

encoder + manifest -> features -> JSON, plots and MLflow metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from medfm.data.datasets import build_dataset
from medfm.data.ingestion.manifest import read_manifest
from medfm.evaluation.legacy import FeatureTable, evaluate_heads, evaluate_robustness
from medfm.features.extract import extract_features
from medfm.figures import embedding_map
from medfm.models.encoder_io import load_encoder
from medfm.tracking.base import Logger, NullLogger


def encoder_features(
    encoder: str | os.PathLike,
    manifest: str | os.PathLike | list[dict],
    *,
    random_init: bool = False,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 128,
) -> tuple[FeatureTable, DictConfig]:
    """Features of every manifest row (a path, or rows already read) under the encoder, or
    under its random-init twin."""
    torch.manual_seed(seed)
    model, enc_cfg = load_encoder(encoder, random_init=random_init)
    rows = manifest if isinstance(manifest, list) else read_manifest(manifest)
    dataset = build_dataset(rows, enc_cfg.data)
    feats = extract_features(model, dataset, str(enc_cfg.model.pooling), batch_size, progress)
    return FeatureTable.from_rows(feats, rows), enc_cfg


def write_json(data: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float))
    os.replace(tmp, path)
    return path


def run_evaluate(
    table: FeatureTable, cfg: DictConfig, out_dir: str | os.PathLike, logger: Logger | None = None
) -> dict:
    """Heads on the features; writes ``out_dir/metrics.json`` and logs ``eval/<head>_test_auc``."""
    logger = logger or NullLogger()
    metrics = evaluate_heads(table, cfg.eval)
    path = write_json(metrics, Path(out_dir) / "metrics.json")
    logger.log_metrics(
        {
            f"eval/{h}_{m}": v
            for h, r in metrics.items()
            for m, v in r.items()
            if isinstance(v, int | float)
        }
    )
    logger.log_artifact(path, "evaluation")
    return metrics


def run_robustness(
    table: FeatureTable, k: int, out_dir: str | os.PathLike, logger: Logger | None = None
) -> dict:
    """Both RI variants and the embedding map: ``robustness.json``, ``embedding_map.png``."""
    logger = logger or NullLogger()
    result = evaluate_robustness(table, k)
    out_dir = Path(out_dir)
    path = write_json(result, out_dir / "robustness.json")
    keep = table.label != ""
    plot = embedding_map(
        table.features[keep],
        table.label[keep],
        table.center[keep],
        out_dir / "embedding_map.png",
        f"RI ratio {result['robustness_index']:.2f}, "
        f"normalized {result['robustness_index_normalized']:.2f} (k={k})",
    )
    logger.log_metrics({f"robustness/{k_}": v for k_, v in result.items() if k_ != "k"})
    for artifact in (path, plot):
        logger.log_artifact(artifact, "robustness")
    return result
