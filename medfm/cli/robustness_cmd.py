"""``medfm robustness``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
