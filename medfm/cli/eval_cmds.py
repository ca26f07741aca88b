"""``medfm evaluate`` and ``medfm robustness``."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
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
        default="linear,knn,gda,prototype,mlp,finetune",
        help="comma-separated: linear, knn, gda, prototype, mlp, finetune, soup "
        "(default: all but soup)",
    )
    p.add_argument(
        "--protocol",
        action="append",
        default=[],
        help="full | fewshot:K[,K...] | fraction:F[,F...] | loco; repeatable "
        "(default: full). fewshot alone means 1,5,10,20 shots; fraction alone 0.01,0.1,1",
    )
    p.add_argument(
        "--seeds", type=int, default=1, help="repetitions, reported as mean ± std (default: 1)"
    )
    p.add_argument(
        "--pooling", choices=("mean", "cls"), help="feature pooling (default: the encoder's)"
    )
    p.add_argument("--weights", help="local weights file for a timm:<name> encoder")
    p.add_argument("--image-size", type=int, help="resize images to this size (timm encoders)")
    p.add_argument("--cache-dir", help="feature cache folder (default: OUT/feature_cache)")
    p.add_argument("--no-baselines", action="store_true", help="skip random: and pixels: rows")
    p.add_argument("--seed", type=int, default=0, help="seed of random-init weights (default: 0)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="eval.* / finetune.* / tracking.* overrides, e.g. finetune.steps=500",
    )
    p.set_defaults(run=_run_evaluate)


def _evaluate_config(args: argparse.Namespace):
    from medfm.config import load_config

    protocols = ";".join(args.protocol)
    return load_config(
        None,
        [
            f"eval.heads=[{args.heads}]",
            f"eval.seeds={args.seeds}",
            f"eval.baselines={not args.no_baselines}",
            f"seed={args.seed}",
            f"out_dir={args.out}",
            *args.overrides,
        ]
        + (["tracking.enabled=false"] if args.no_tracking else []),
    ), protocols


def _run_evaluate(args: argparse.Namespace) -> int:
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


def _add_robustness(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "robustness",
        help="audit encoders: do they represent the medical center more than the biology?",
        description="Robustness audit of one or more encoders across medical centers: both "
        "robustness-index variants (ratio, de Jong et al. 2025: above 1 biology dominates; "
        "normalized, PathoROB SO/(SO+OS): 0.5 neutral) with bootstrap 95% CIs, the RI-vs-k "
        "curve, center-vs-biology predictability, error attribution, per-center-pair "
        "breakdown, APD and leave-one-center-out AUC. Neighbours sharing the group column "
        "(patient) are excluded. Writes OUT/robustness.json and the self-contained robustness "
        "card OUT/report.html, and logs both to MLflow. The center column can be any "
        "manifest column, e.g. a pseudonymised InstitutionName, Manufacturer or a scanner model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--encoder",
        action="append",
        default=[],
        help="encoder artifact (pretrain out_dir); random:<dir> for its random-init "
        "twin; repeat to compare encoders in one table",
    )
    p.add_argument("--data", help="manifest.csv (or its folder) to embed with --encoder")
    p.add_argument(
        "--embeddings",
        action="append",
        default=[],
        metavar="FILE.npz",
        help="precomputed embeddings: an .npz with 'embeddings' (n, d) and one array "
        "per column; repeatable",
    )
    p.add_argument("--bio-column", default="label", help="column with the biological class")
    p.add_argument("--center-column", default="center", help="column with the center")
    p.add_argument(
        "--group-column",
        default="patient",
        help="neighbours sharing this column are excluded; 'none' to disable",
    )
    p.add_argument(
        "--k",
        default="10",
        help="neighbours per sample, or 'auto' (best biological "
        "kNN balanced accuracy over 5, 10, 20, 50)",
    )
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the CIs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed for random init and resampling")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=_run_robustness)


def _run_robustness(args: argparse.Namespace) -> int:
    from medfm.config import ConfigError, load_config
    from medfm.robustness import audit as A
    from medfm.tracking.base import make_logger

    if not args.embeddings and not (args.encoder and args.data):
        raise ConfigError(
            "give --encoder ENC [--encoder ENC2 ...] --data MANIFEST, or --embeddings FILE.npz"
        )
    group = None if args.group_column.lower() == "none" else args.group_column
    columns = (args.bio_column, args.center_column, group)
    datasets = A.audit_data_from_npz(args.embeddings, *columns) if args.embeddings else {}
    if args.encoder:
        datasets |= A.audit_data_from_encoders(
            args.encoder, args.data, *columns, args.seed, not args.no_progress
        )
    cfg = load_config(
        None, [f"out_dir={args.out}"] + (["tracking.enabled=false"] if args.no_tracking else [])
    )
    logger = make_logger(cfg.tracking, args.out, run_name="robustness")
    logger.log_params(
        {
            "encoders": ",".join(datasets),
            "k": args.k,
            "bio_column": args.bio_column,
            "center_column": args.center_column,
        }
    )
    k = args.k if args.k == "auto" else int(args.k)
    results = A.run_audit(
        datasets, args.out, k=k, n_boot=args.bootstrap, seed=args.seed, logger=logger
    )
    logger.close()
    for name, r in results["encoders"].items():
        lo, hi = r["robustness_index_ci95"]
        print(
            f"{name}: RI {r['robustness_index']:.3f} [{lo:.3f}, {hi:.3f}], normalized "
            f"{r['robustness_index_normalized']:.3f}, k={r['k']}"
        )
    print(f"Robustness card: {Path(args.out) / 'report.html'}")
    return 0


evaluate = SimpleNamespace(add_parser=_add_evaluate)
robustness = SimpleNamespace(add_parser=_add_robustness)
