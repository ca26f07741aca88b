"""``medfm pretrain``."""

from __future__ import annotations

import argparse

from medfm.cli.options import add_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``medfm pretrain`` and its options to ``sub``."""
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pre-training of a ViT encoder",
        description="Pre-train an encoder on the train split of data.manifest. Settings come from "
        "built-in defaults <- --config FILE <- KEY=VALUE overrides. Writes "
        "OUT_DIR/config.yaml, OUT_DIR/encoder.safetensors and checkpoints; rerunning "
        "the same command on the same out_dir resumes.",
        epilog="Example: medfm pretrain --config configs/pretrain/mae_vit_tiny_2d.yaml "
        "data.manifest=runs/demo/ingest/manifest.csv train.max_steps=50 out_dir=runs/x seed=1",
    )
    p.add_argument("--config", help="YAML recipe (see configs/pretrain/)")
    add_overrides(p, "train.max_steps=50 seed=1")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medfm pretrain`` with the parsed ``args``; returns the exit status."""
    from medfm.api import pretrain
    from medfm.config import load_config
    from medfm.data.transforms.augment import augment_steps
    from medfm.data.transforms.preprocess import resolve_preprocess
    from medfm.tracking.base import make_logger

    cfg = load_config(args.config, args.overrides)
    resolve_preprocess(cfg.data)  # a bad data.preprocess or data.augment step fails here,
    augment_steps(cfg.data)  # before any run starts
    logger = make_logger(cfg.tracking, cfg.out_dir, run_name=cfg.tracking.run_name or "pretrain")
    try:
        out_dir, result = pretrain(cfg, logger)
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    print(
        f"Trained {result.steps} steps (final loss {result.final_loss:.4f}, "
        f"{result.images_per_second:.0f} images/s). Encoder: {out_dir / 'encoder.safetensors'}"
    )
    if logger.run_id:
        print(f"MLflow run {logger.run_id} at {logger.tracking_uri}")
    if cfg.tracking.register_as and logger.run_id:
        from medfm.features.model_registry import register_trained

        version = register_trained(cfg, out_dir, logger)
        if version:
            print(f"Registered as models:/{cfg.tracking.register_as}/{version}")
    return 0
