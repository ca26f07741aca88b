"""``medfm robustness``: the robustness audit (:mod:`medfm.robustness.audit`) from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path

from medfm.cli.options import add_overrides, add_run_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medfm robustness`` and its options on ``sub`` (long only because it lists
    every option with its help, one declaration each)."""
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
        "manifest column, e.g. a pseudonymised InstitutionName, Manufacturer or a scanner model. "
        "Unset options come from robustness.* (k, bio_column, center_column, group_column), "
        "eval.bootstrap and seed, which KEY=VALUE overrides may set.",
        epilog="Example: medfm robustness --encoder runs/mae --encoder timm:vit_small_patch16_224 "
        "--weights vit_small.safetensors --data runs/ingest/manifest.csv --out runs/audit "
        "robustness.k=auto data.image_size=224",
    )
    p.add_argument(
        "--encoder",
        action="append",
        default=[],
        help="encoder: a `medfm pretrain` out_dir (or its encoder.safetensors); random:<out_dir "
        "or architecture> for random initialisation; timm:<name> with --weights FILE (or "
        "timm:<name>@FILE); repeat to compare encoders in one table",
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
    p.add_argument("--weights", help="local weights file for the timm:<name> encoders")
    p.add_argument("--image-size", type=int, help="resize images to this size (timm encoders)")
    p.add_argument("--cache-dir", help="feature cache folder (default: OUT/feature_cache)")
    p.add_argument("--bio-column", help="column with the biological class (default: label)")
    p.add_argument("--center-column", help="column with the center (default: center)")
    p.add_argument(
        "--group-column",
        help="neighbours sharing this column are excluded; 'none' to disable (default: patient)",
    )
    p.add_argument(
        "--k",
        help="neighbours per sample, or 'auto' (best biological kNN balanced accuracy over "
        "5, 10, 20, 50) (default: 10)",
    )
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples for the CIs (default: 200)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, help="seed for random init and resampling (default: 0)")
    add_run_options(p)
    add_overrides(p, "robustness.k=auto data.image_size=224 tracking.uri=...")
    p.set_defaults(run=run)


def _settings(args: argparse.Namespace):
    """The config (defaults <- overrides) and the audit settings, options over config."""
    from medfm.config import load_config

    cfg = load_config(
        None,
        [f"out_dir={args.out}", *args.overrides]
        + (["tracking.enabled=false"] if args.no_tracking else []),
    )
    rob = cfg.robustness

    def given(value, default):
        return default if value is None else value

    group = str(given(args.group_column, rob.group_column) or "none")
    k = str(given(args.k, rob.k))
    return cfg, {
        "bio": str(given(args.bio_column, rob.bio_column)),
        "center": str(given(args.center_column, rob.center_column)),
        "group": None if group.lower() == "none" else group,
        "k": k if k == "auto" else int(k),
        "n_boot": int(given(args.bootstrap, cfg.eval.bootstrap)),
        "seed": int(given(args.seed, cfg.seed)),
    }


def run(args: argparse.Namespace) -> int:
    """Embed (or read) every encoder's features, audit them, print one line per encoder."""
    from medfm.config import ConfigError
    from medfm.robustness import inputs
    from medfm.robustness.audit import run_audit
    from medfm.tracking.base import make_logger

    if not args.embeddings and not (args.encoder and args.data):
        raise ConfigError(
            "give --encoder ENC [--encoder ENC2 ...] --data MANIFEST, or --embeddings FILE.npz"
        )
    cfg, s = _settings(args)
    columns = (s["bio"], s["center"], s["group"])
    datasets = inputs.audit_data_from_npz(args.embeddings, *columns) if args.embeddings else {}
    if args.encoder:
        datasets |= inputs.audit_data_from_encoders(
            args.encoder,
            args.data,
            *columns,
            s["seed"],
            not args.no_progress,
            weights=args.weights,
            cfg=cfg,
            image_size=args.image_size,
            cache_dir=Path(args.cache_dir or Path(args.out) / "feature_cache"),
        )
    logger = make_logger(cfg.tracking, args.out, run_name="robustness")
    logger.log_params(
        {"encoders": ",".join(datasets), "k": s["k"], "bio_column": s["bio"]}
        | {"center_column": s["center"], "group_column": str(s["group"])}
    )
    try:
        results = run_audit(
            datasets, args.out, k=s["k"], n_boot=s["n_boot"], seed=s["seed"], logger=logger
        )
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    if any(str(spec).startswith("models:/") for spec in args.encoder or []):
        from medfm.features.model_registry import attach_model_versions

        attach_model_versions(args.encoder, args.out)  # RI tags + card on registered versions
    for name, r in results["encoders"].items():
        lo, hi = r["robustness_index_ci95"]
        print(
            f"{name}: RI {r['robustness_index']:.3f} [{lo:.3f}, {hi:.3f}], normalized "
            f"{r['robustness_index_normalized']:.3f}, k={r['k']}"
        )
    print(f"Robustness card: {Path(args.out) / 'report.html'}")
    return 0
