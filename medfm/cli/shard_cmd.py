"""``medfm shard``."""

from __future__ import annotations

import argparse

from medfm.cli.options import add_run_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``medfm shard`` and its options to ``sub``."""
    p = sub.add_parser(
        "shard",
        help="write the preprocessed train split as WebDataset shards",
        description="Run a recipe's deterministic data.preprocess steps once on every train image "
        "of MANIFEST and write OUT/shard-*.tar (WebDataset layout) and OUT/shards.json. "
        "Pre-train from them with data.shards=OUT: no decoding or resampling at training time, "
        "and exact resume at any number of processes or workers.",
        epilog="Example: medfm shard runs/ct/ingest/manifest.csv --config "
        "configs/pretrain/ct_3d.yaml --out runs/ct/shards; then medfm pretrain --config "
        "configs/pretrain/ct_3d.yaml data.shards=runs/ct/shards out_dir=runs/ct/mae",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "manifest",
        nargs="+",
        metavar="MANIFEST [KEY=VALUE ...]",
        help="manifest.csv written by `medfm ingest`, then data.* overrides (data.channels=1)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder for the shards and shards.json, or an fsspec URL (s3://bucket/ct, needs s3fs)",
    )
    p.add_argument("--config", help="recipe whose data.preprocess steps to apply")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per tar file")
    add_run_options(p, tracking=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medfm shard`` with the parsed ``args``; returns the exit status."""
    from medfm.config import load_config
    from medfm.data.datasets import rows_for_split
    from medfm.data.ingestion.manifest import read_manifest
    from medfm.data.shards import write_shards
    from medfm.train.pretrain import infer_channels

    manifest, *overrides = args.manifest
    cfg = load_config(args.config, [f"data.manifest={manifest}", *overrides])
    rows = read_manifest(manifest)
    rows = rows_for_split(rows, "train") or rows
    cfg = infer_channels(cfg, rows)
    out = write_shards(rows, cfg.data, args.out, args.per_shard, progress=not args.no_progress)
    print(f"Wrote {len(rows)} train images to {out} (see {str(out).rstrip('/')}/shards.json)")
    return 0
