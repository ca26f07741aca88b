"""``medfm demo``: the whole pipeline on the embedded multi-center dataset, in one call.

generate files -> ingest (MONAI readers, pseudonyms, patient-level splits) -> SimCLR pre-training
of a small conv-stem timm ViT (:data:`DEMO_RECIPE`) -> encoder artifact -> ``medfm evaluate``
(:func:`medfm.evaluation.run.evaluate`, heads linear and knn, protocol full, with the random-init
and raw-pixel baselines, and each head's gain over its random twin with a paired bootstrap CI)
-> ``medfm robustness`` (:func:`medfm.robustness.audit.audit_encoders`: robustness index, de Jong
et al. 2025 ratio and PathoROB normalized, and the robustness card) -> MLflow. The commands' own
functions run here, so the demo's numbers are those ``medfm evaluate`` and ``medfm robustness``
give on its encoder; ``summary.json`` is read back from the ``metrics.json`` and
``robustness.json`` they write.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from medfm.api import pretrain
from medfm.config import load_config
from medfm.data.ingestion.ingest import ingest
from medfm.data.synthetic import SyntheticSpec, write_dataset
from medfm.evaluation.run import evaluate
from medfm.io import write_json
from medfm.robustness.audit import audit_encoders
from medfm.tracking.base import Logger, local_tracking_uri, make_logger

DEMO_SALT = "medfm-demo-salt"  # fixed so the demo's pseudonyms repeat; real data uses its own
DEMO_EVAL = ("eval.heads=[linear,knn]", "eval.protocols=[full]")
# SimCLR (Chen et al. 2020) on a convolutional-stem ViT-Ti with 8-pixel patches (Xiao et al.
# 2021): 16 tokens per 32-pixel image keep a step cheap on a CPU, and unlike MAE at this budget
# it beats its random-init twin on the phantoms in linear and kNN AUC at center strengths 0, 0.5
# and 1 (benchmarks/demo_quality.py; MAE read 0.872 against 0.890 at random init).
DEMO_RECIPE: tuple[str, ...] = (
    "ssl.objective=simclr",
    "ssl.temperature=0.5",
    "ssl.crop_scale=[0.3,1.0]",
    "model.stem=conv",
    "model.patch_size=8",
    "train.lr=1e-3",
)


@dataclasses.dataclass(frozen=True)
class DemoSize:
    """How big one demo run is."""

    cases_per_center: int
    images_per_case: int
    max_steps: int
    batch_size: int


FULL = DemoSize(cases_per_center=50, images_per_case=3, max_steps=300, batch_size=64)
QUICK = DemoSize(cases_per_center=16, images_per_case=2, max_steps=60, batch_size=32)


def _config(
    out: Path, size: DemoSize, seed: int, tracking: bool, progress: bool, recipe=DEMO_RECIPE
) -> DictConfig:
    return load_config(
        None,
        [
            *recipe,
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
            *DEMO_EVAL,
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
    recipe: tuple[str, ...] = DEMO_RECIPE,
) -> dict:
    """Run the demo end to end; returns (and writes to ``out_dir/summary.json``) the summary.

    Writes ``data/``, ``ingest/``, ``pretrain/`` (the encoder), ``evaluation/`` (as ``medfm
    evaluate --heads linear,knn``) and ``robustness/`` (as ``medfm robustness``, sharing the
    evaluation's feature cache) under ``out_dir``.
    """
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
    cfg = _config(out, size, seed, tracking, progress, recipe)
    logger = make_logger(cfg.tracking, out, run_name=f"demo-strength{center_strength:g}-seed{seed}")
    try:
        logger.log_metrics({f"ingest/{k}": report[k] for k in ("seen", "accepted", "rejected")})
        logger.log_artifact(out / "ingest" / "report.json", "ingest")
        logger.log_params({"demo.center_strength": center_strength, "demo.quick": quick})
        encoder_dir, result = pretrain(cfg, logger)
        _evaluate_and_audit(encoder_dir, cfg, out, logger, progress)
        summary = _summary(out, report, result.steps, center_strength, seed, logger, t0)
        logger.log_metrics(
            {
                f"demo/{k}": v
                for k, v in summary.items()
                if k.endswith(("_auc", "_index", "_gain")) and isinstance(v, float)
            }
        )
        logger.log_artifact(write_json(summary, out / "summary.json"))
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    return summary


def _evaluate_and_audit(
    encoder_dir: Path, cfg: DictConfig, out: Path, logger: Logger, progress: bool
) -> None:
    """``medfm evaluate`` and ``medfm robustness`` on the demo encoder, the audit reusing the
    evaluation's cached features."""
    cache = out / "evaluation" / "feature_cache"
    manifest = cfg.data.manifest
    evaluate(encoder_dir, manifest, cfg, out / "evaluation", logger, progress=progress)
    audit_encoders(
        [str(encoder_dir)],
        manifest,
        out / "robustness",
        bio=str(cfg.robustness.bio_column),
        center=str(cfg.robustness.center_column),
        group=cfg.robustness.group_column,
        k=int(cfg.robustness.k),
        n_boot=int(cfg.eval.bootstrap),
        seed=int(cfg.seed),
        title="medfm demo: robustness card",
        logger=logger,
        progress=progress,
        cfg=cfg,
        cache_dir=cache,
    )


def _summary(out: Path, report: dict, steps: int, strength: float, seed: int, logger, t0) -> dict:
    """The demo's headline numbers, read from the written ``metrics.json`` and
    ``robustness.json``."""
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    robust = json.loads((out / "robustness" / "robustness.json").read_text())
    encoder = next(iter(robust["encoders"].values()))
    full = {row: by_protocol["full"] for row, by_protocol in metrics.items()}
    pixels = full.get("pixels:linear", {}).get("test_auc")
    tracked = logger.run_id is not None
    return {
        "linear_auc": full["linear"]["test_auc"],
        "linear_auc_ci95": full["linear"]["test_auc_ci95"],
        "knn_auc": full["knn"]["test_auc"],
        "linear_acc": full["linear"]["test_acc"],
        "knn_acc": full["knn"]["test_acc"],
        "random_init_linear_auc": full["random:linear"]["test_auc"],
        "random_init_knn_auc": full["random:knn"]["test_auc"],
        "linear_gain": full["linear"].get("gain_vs_random"),
        "linear_gain_ci95": full["linear"].get("gain_vs_random_ci95"),
        "knn_gain": full["knn"].get("gain_vs_random"),
        "knn_gain_ci95": full["knn"].get("gain_vs_random_ci95"),
        "pixels_linear_auc": pixels,
        "robustness_index": encoder["robustness_index"],
        "robustness_index_ci95": encoder["robustness_index_ci95"],
        "robustness_index_normalized": encoder["robustness_index_normalized"],
        "chance_robustness_index": robust["chance"]["robustness_index"],
        "robustness_k": encoder["k"],
        "center_strength": strength,
        "seed": seed,
        "pretrain_steps": steps,
        "images": report["rows"],
        "quarantined": report["rejected"],
        "mlflow_run_id": logger.run_id if tracked else None,
        "tracking_uri": logger.tracking_uri if tracked else None,
        "encoder": str(out / "pretrain" / "encoder.safetensors"),
        "metrics": str(out / "evaluation" / "metrics.json"),
        "robustness_card": str(out / "robustness" / "report.html"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


ROWS = (
    ("linear_auc", "linear probe test AUC", "linear_auc_ci95"),
    ("knn_auc", "kNN test AUC", None),
    ("random_init_linear_auc", "random-init linear AUC", None),
    ("random_init_knn_auc", "random-init kNN AUC", None),
    ("linear_gain", "gain from pre-training, linear", "linear_gain_ci95"),
    ("knn_gain", "gain from pre-training, kNN", "knn_gain_ci95"),
    ("pixels_linear_auc", "raw-pixel linear AUC", None),
    ("robustness_index", "robustness index (ratio)", "robustness_index_ci95"),
    ("chance_robustness_index", "  ... at chance", None),
    ("robustness_index_normalized", "robustness index (normalized)", None),
    ("center_strength", "center strength", None),
    ("images", "images", None),
    ("pretrain_steps", "pre-training steps", None),
    ("seconds", "seconds", None),
)


def _cell(value: object, signed: bool = False) -> str:
    if isinstance(value, float):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return "n/a" if value is None else str(value)


def format_summary(summary: dict) -> str:
    """The table ``medfm demo`` prints (values with their 95% CIs where the summary has them),
    where the full reports are, and how to open MLflow on the run."""
    lines = ["", "medfm demo summary", "-" * 64]
    for key, label, ci_key in ROWS:
        if key not in summary:
            continue
        ci = summary.get(ci_key) if ci_key else None
        signed = "gain" in key
        extra = f"  [{_cell(ci[0], signed)}, {_cell(ci[1], signed)}]" if ci else ""
        lines.append(f"{label:<32} {_cell(summary[key], signed):>10}{extra}")
    lines.append("-" * 64)
    for key, label in (("metrics", "metrics"), ("robustness_card", "robustness card")):
        if summary.get(key):
            lines.append(f"{label:<16} {summary[key]}")
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
