"""``medfm curate``."""

from __future__ import annotations

import argparse

from medfm.cli.options import add_overrides, add_run_options

METHOD_HELP = (
    "dhash: 64-bit difference hash, redundant within THRESHOLD bits (default 6, the paper's "
    "Hash-6); ssim: structural similarity to the last kept slice >= THRESHOLD (default 0.9); "
    "mi: normalised mutual information to the last kept slice >= THRESHOLD (default 0.6); "
    "embedding: cosine similarity of --encoder features to a kept unit >= THRESHOLD (default "
    "0.95); every_n: keep every THRESHOLD-th unit (default 2)"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``medfm curate`` and its options to ``sub``."""
    p = sub.add_parser(
        "curate",
        help="remove near-duplicate slices and tiles before pre-training (Less is More)",
        description="Reduce the redundancy of a manifest before pre-training, after Wolf et al. "
        "2024 ('Less is More'): within each volume (--scope volume, the paper) the slices that "
        "repeat a kept slice are dropped; with --scope dataset, near-duplicates across the whole "
        "dataset (tiles, 2D sets), found with an index. Writes OUT/manifest.csv (the same "
        "columns; kept slices of volumes as 2D files under OUT/slices/, so `medfm pretrain` "
        "takes it unchanged), OUT/curation.json (seen and kept per volume and per center), "
        "OUT/kept_fraction.png and OUT/pairs.png (dropped units beside the kept unit each "
        "repeats), all logged to MLflow. Units are taken after the --config recipe's "
        "preprocessing (without whole-image resizes).",
        epilog="Examples: medfm curate ingest/manifest.csv --config configs/pretrain/ct_3d.yaml "
        "--out curated/; medfm curate tiles/manifest.csv --scope dataset --method dhash "
        "--threshold 4 --out tiles_curated/; medfm curate ingest/ --sweep --out sweep/ (kept "
        "fraction against the threshold for every method, to choose one first)",
    )
    p.add_argument("data", metavar="MANIFEST", help="manifest.csv (or its folder), or a .npz")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="dhash", help=METHOD_HELP)
    p.add_argument("--threshold", type=float, help="the method's threshold (see --method)")
    p.add_argument(
        "--scope",
        default="volume",
        choices=("volume", "dataset"),
        help="volume: within each volume, as the paper (default); dataset: across all units",
    )
    p.add_argument("--config", help="recipe whose data.preprocess the units go through")
    p.add_argument("--encoder", help="for --method embedding: any `medfm evaluate` encoder spec")
    p.add_argument("--weights", help="local weights file for a timm:<name> encoder")
    p.add_argument("--image-size", type=int, help="resize units to this size for the encoder")
    p.add_argument(
        "--sweep", action="store_true", help="only print and plot kept fraction vs threshold"
    )
    p.add_argument(
        "--sweep-limit", type=int, default=200, help="rows the sweep samples (default: 200)"
    )
    add_run_options(p)
    add_overrides(p, "data.preprocess=null tracking.uri=http://127.0.0.1:5000")
    p.set_defaults(run=run)


def _embedder(args: argparse.Namespace, cfg):
    if not args.encoder:
        return None
    from medfm.curation.embed import make_embedder

    return make_embedder(args.encoder, cfg.data, args.weights, args.image_size)


def run(args: argparse.Namespace) -> int:
    """Run ``medfm curate`` with the parsed ``args``; returns the exit status."""
    from medfm.config import ConfigError, load_config

    extra = ["tracking.enabled=false"] if args.no_tracking else []
    cfg = load_config(args.config, [f"out_dir={args.out}", *args.overrides, *extra])
    if args.sweep:
        from medfm.curation.sweep import format_sweep, sweep

        scope, limit = args.scope, args.sweep_limit
        table = sweep(
            args.data, args.out, cfg.data, scope, _embedder(args, cfg), limit, not args.no_progress
        )
        print(format_sweep(table))
        print(f"Kept fraction against threshold: {args.out}/sweep.png")
        return 0
    from medfm.curation.methods import check_method
    from medfm.curation.run import curate
    from medfm.tracking.base import make_logger

    try:  # before a model or a run is made
        check_method(args.method, args.threshold, args.scope)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    embedder = _embedder(args, cfg) if args.method == "embedding" else None
    logger = make_logger(cfg.tracking, args.out, run_name="curate")
    try:
        report = curate(
            args.data,
            args.out,
            cfg.data,
            args.method,
            args.threshold,
            args.scope,
            embedder,
            not args.no_progress,
            logger,
        )
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    print(
        f"Kept {report['kept']} of {report['seen']} units ({report['kept_fraction']:.1%}; "
        f"{report['method']}, threshold {report['threshold']}, {report['scope']} scope). "
        f"Manifest: {args.out}/manifest.csv"
    )
    for note, count in report["notes"].items():
        print(f"note: {count} {note}")
    if report["rows"]["unreadable"]:
        print(f"{report['rows']['unreadable']} rows could not be read: {args.out}/quarantine.csv")
    return 0
