"""``medfm demo``: the whole pipeline on the embedded multi-center dataset, in one call.

generate files -> ingest (MONAI readers, pseudonyms, patient-level splits) -> MAE pre-training of a
small timm ViT -> encoder artifact -> linear probe and kNN test AUC (and the random-init
baseline) ->
robustness index (de Jong et al. 2025 ratio; PathoROB normalized) -> MLflow.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from medfm.config import load_config
from medfm.data.ingestion.ingest import ingest
from medfm.data.synthetic import SyntheticSpec, write_dataset
from medfm.evaluation.legacy_runner import (
    encoder_features,
    run_evaluate,
    run_robustness,
    write_json,
)
from medfm.tracking.base import local_tracking_uri, make_logger
from medfm.api import pretrain

DEMO_SALT = "medfm-demo-salt"  # fixed so the demo's pseudonyms repeat; real data uses its own


@dataclasses.dataclass(frozen=True)
class DemoSize:
    cases_per_center: int
    images_per_case: int
    max_steps: int
    batch_size: int


FULL = DemoSize(cases_per_center=50, images_per_case=3, max_steps=600, batch_size=64)
QUICK = DemoSize(cases_per_center=16, images_per_case=2, max_steps=60, batch_size=32)


def _config(out: Path, size: DemoSize, seed: int, tracking: bool, progress: bool):
    return load_config(
        None,
        [
            f"out_dir={out / 'pretrain'}",
            f"seed={seed}",
            f"data.manifest={out / 'ingest' / 'manifest.csv'}",
            f"train.max_steps={size.max_steps}",
            f"train.batch_size={size.batch_size}",
            f"train.warmup_steps={max(1, size.max_steps // 10)}",
            f"train.progress={progress}",
            f"tracking.enabled={tracking}",
            "tracking.experiment=medfm-demo",
            f"train.checkpoint_every={max(1, size.max_steps // 2)}",
        ],
    )


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    *,
    quick: bool = False,
    center_strength: float = 0.5,
    seed: int = 0,
    tracking: bool = True,
    progress: bool = True,
) -> dict:
    """Run the demo end to end; returns (and writes to ``out_dir/summary.json``) the summary."""
    out, size, t0 = Path(out_dir).resolve(), QUICK if quick else FULL, time.perf_counter()
    spec = SyntheticSpec(
        cases_per_center=size.cases_per_center,
        images_per_case=size.images_per_case,
        center_strength=center_strength,
        seed=seed,
    )
    labels = write_dataset(out / "data", spec)
    report = ingest(
        [out / "data" / "raw"],
        out / "ingest",
        labels=labels,
        salt=DEMO_SALT,
        seed=seed,
        progress=progress,
    ).counts
    cfg = _config(out, size, seed, tracking, progress)
    logger = make_logger(cfg.tracking, out, run_name=f"demo-strength{center_strength:g}-seed{seed}")
    try:
        logger.log_metrics({f"ingest/{k}": report[k] for k in ("seen", "accepted", "rejected")})
        logger.log_artifact(out / "ingest" / "report.json", "ingest")
        logger.log_params({"demo.center_strength": center_strength, "demo.quick": quick})
        encoder_dir, result = pretrain(cfg, logger)
        table, _ = encoder_features(encoder_dir, cfg.data.manifest, progress=progress)
        heads = run_evaluate(table, cfg, out / "evaluation", logger)
        robust = run_robustness(table, int(cfg.robustness.k), out / "robustness", logger)
        baseline, _ = encoder_features(
            encoder_dir, cfg.data.manifest, random_init=True, seed=seed, progress=False
        )
        base = run_evaluate(baseline, cfg, out / "evaluation" / "random_init")
        summary = _summary(
            heads,
            robust,
            base,
            report,
            result.steps,
            center_strength,
            seed,
            logger,
            cfg.tracking.enabled and logger.run_id,
            out,
            t0,
        )
        logger.log_metrics({"demo/random_init_linear_auc": summary["random_init_linear_auc"]})
        logger.log_artifact(write_json(summary, out / "summary.json"))
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    return summary


def _summary(heads, robust, base, report, steps, strength, seed, logger, tracked, out, t0) -> dict:
    return {
        "linear_auc": heads["linear"]["test_auc"],
        "knn_auc": heads["knn"]["test_auc"],
        "linear_acc": heads["linear"]["test_acc"],
        "knn_acc": heads["knn"]["test_acc"],
        "random_init_linear_auc": base["linear"]["test_auc"],
        "robustness_index": robust["robustness_index"],
        "robustness_index_normalized": robust["robustness_index_normalized"],
        "robustness_k": robust["k"],
        "center_strength": strength,
        "seed": seed,
        "pretrain_steps": steps,
        "images": report["rows"],
        "quarantined": report["rejected"],
        "mlflow_run_id": logger.run_id if tracked else None,
        "tracking_uri": logger.tracking_uri if tracked else None,
        "encoder": str(out / "pretrain" / "encoder.safetensors"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def format_summary(summary: dict) -> str:
    """The table ``medfm demo`` prints, and how to open MLflow on the run."""
    lines = ["", "medfm demo summary", "-" * 48]
    for key in (
        "linear_auc",
        "knn_auc",
        "random_init_linear_auc",
        "robustness_index",
        "robustness_index_normalized",
        "center_strength",
        "images",
        "pretrain_steps",
        "seconds",
    ):
        value = summary[key]
        lines.append(
            f"{key:<30} {value:>12.3f}" if isinstance(value, float) else f"{key:<30} {value:>12}"
        )
    lines.append("-" * 48)
    uri = summary.get("tracking_uri")
    if uri:
        lines.append(f"MLflow run {summary['mlflow_run_id']}; open the UI with:")
        lines.append(
            f"  mlflow ui --backend-store-uri {uri}"
            if uri.startswith("sqlite")
            else f"  open {uri} in a browser"
        )
    return "\n".join(lines)


__all__ = ["run_demo", "format_summary", "local_tracking_uri"]
