"""``medfm evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from medfm.cli.options import add_overrides, add_run_options


def default_heads() -> list[str]:
    """``eval.heads`` of the default config: the heads ``medfm evaluate`` runs without --heads."""
    from medfm.config import DEFAULTS

    return [str(h) for h in DEFAULTS["eval"]["heads"]]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``medfm evaluate`` and its options to ``sub``."""
    from medfm.heads.registry import HEADS

    p = sub.add_parser(
        "evaluate",
        help="downstream heads, protocols and baselines: test AUC with 95%% CIs",
        description="Evaluate an encoder downstream. Features of every image (cached, keyed by "
        "encoder and data) feed each head, fitted on the train split with its hyper-parameter "
        "chosen on val, under each label-budget protocol and over seeds (mean ± std). Every "
        "table also holds the same architecture at random initialisation (random:<head>) and "
        "a logistic regression on raw pixels (pixels:linear), computed in the same run. Writes "
        "OUT/metrics.json ({head: {protocol: {test_auc, test_auc_ci95, test_acc, test_bacc, "
        "test_f1, test_ece, per_center}}}), OUT/metrics.md, ROC curves, per-center bars and "
        "label-efficiency curves, and one nested MLflow run per head and protocol.",
    )
    p.add_argument(
        "--encoder",
        required=True,
        help="a `medfm pretrain` out_dir (or its encoder.safetensors); random:<out_dir or "
        "architecture> for random initialisation; timm:<name> with --weights FILE",
    )
    p.add_argument(
        "--data",
        required=True,
        help="manifest.csv (or its folder) with split and label columns, or a MedMNIST .npz",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--heads",
        default=None,
        help="comma-separated heads (default: eval.heads of the config, "
        f"{','.join(default_heads())}): "
        + "; ".join(f"{name} ({HEADS.get(name).summary})" for name in HEADS.names()),
    )
    p.add_argument(
        "--protocol",
        action="append",
        default=[],
        help="full | fewshot:K[,K...] | fraction:F[,F...] | loco | "
        "incremental:base=C1,C2[;shots=K]; repeatable (default: full). fewshot alone means "
        "1,5,10,20 shots; fraction alone 0.01,0.1,1. incremental (class-incremental): the base "
        "classes C1,C2 (names as in the labels, or base=F for the first fraction F of the sorted "
        "classes) keep every training label, each other class K patients (default 5); the "
        "prototype head calibrates novel prototypes with TEEN, and test_acc_base, "
        "test_acc_novel and their harmonic mean test_acc_hm are reported",
    )
    p.add_argument(
        "--seeds", type=int, default=1, help="repetitions, reported as mean ± std (default: 1)"
    )
    p.add_argument(
        "--pooling", choices=("mean", "cls"), help="feature pooling (default: the encoder's)"
    )
    p.add_argument(
        "--features",
        help="blocks the frozen heads read: last (default, eval.features) or lastN, e.g. last4 "
        "(the last 4 blocks' pooled tokens concatenated, as DINO's linear evaluation)",
    )
    p.add_argument("--weights", help="local weights file for a timm:<name> encoder")
    p.add_argument("--image-size", type=int, help="resize images to this size (timm encoders)")
    p.add_argument("--cache-dir", help="feature cache folder (default: OUT/feature_cache)")
    p.add_argument("--no-baselines", action="store_true", help="skip random: and pixels: rows")
    p.add_argument("--seed", type=int, default=0, help="seed of random-init weights (default: 0)")
    add_run_options(p)
    add_overrides(p, "eval.* / finetune.* / tracking.*: finetune.steps=500")
    p.set_defaults(run=run)


def _evaluate_config(args: argparse.Namespace):
    from medfm.config import load_config

    protocols = ";".join(args.protocol)
    return load_config(
        None,
        [
            *([f"eval.heads=[{args.heads}]"] if args.heads else []),
            *([f"eval.features={args.features}"] if args.features else []),
            f"eval.seeds={args.seeds}",
            f"eval.baselines={not args.no_baselines}",
            f"seed={args.seed}",
            f"out_dir={args.out}",
            *args.overrides,
        ]
        + (["tracking.enabled=false"] if args.no_tracking else []),
    ), protocols


def run(args: argparse.Namespace) -> int:
    """Run ``medfm evaluate`` with the parsed ``args``; returns the exit status."""
    from medfm.evaluation.run import evaluate
    from medfm.evaluation.tables import metrics_markdown
    from medfm.tracking.base import make_logger

    cfg, protocols = _evaluate_config(args)
    if protocols:  # else eval.protocols: an override, or the default (full)
        cfg.eval.protocols = protocols
    logger = make_logger(cfg.tracking, args.out, run_name="evaluate")
    try:
        metrics = evaluate(
            args.encoder,
            args.data,
            cfg,
            args.out,
            logger,
            weights=args.weights,
            image_size=args.image_size,
            pooling=args.pooling,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    print(metrics_markdown(metrics).split("\n## ")[0])
    print(f"Written: {Path(args.out) / 'metrics.json'}, metrics.md and plots")
    return 0
