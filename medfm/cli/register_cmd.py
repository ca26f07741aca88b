"""``medfm register``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``medfm register`` and its options to ``sub``."""
    p = sub.add_parser(
        "register",
        help="register a pre-trained encoder as an MLflow model version",
        description="Log the encoder of RUN_DIR (encoder.safetensors + config.yaml) in a new "
        "MLflow run as a pyfunc model that returns pooled embeddings, and register it as a new "
        "version of model NAME, tagged with model.name, ssl.objective and the sha256 of the "
        "recipe and of the training manifest (no paths). Load it back with "
        "mlflow.pyfunc.load_model('models:/NAME/VERSION') or use models:/NAME/VERSION (or "
        "models:/NAME@ALIAS) as an --encoder spec.",
        epilog="Example: medfm register runs/ct/mae --name ct-mae --alias champion "
        "--tracking-uri http://127.0.0.1:5000",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `medfm pretrain` out_dir")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", help="alias to move to the new version (e.g. champion)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking (and registry) server; default: MLFLOW_TRACKING_URI",
    )
    p.add_argument("--experiment", default="medfm-registry", help="experiment of the new run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medfm register`` with the parsed ``args``; returns the exit status."""
    from medfm.features.model_registry import register_encoder

    version = register_encoder(
        args.run_dir, args.name, args.tracking_uri, alias=args.alias, experiment=args.experiment
    )
    alias = f" (alias {args.alias})" if args.alias else ""
    print(f"Registered {args.run_dir} as models:/{args.name}/{version}{alias}")
    return 0
