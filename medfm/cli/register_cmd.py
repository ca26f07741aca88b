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
        epilog="Examples: medfm register runs/ct/mae --name ct-mae --alias champion "
        "--tracking-uri http://127.0.0.1:5000; medfm register --name ct-mae --alias champion "
        "--version 2 (moves the alias back to version 2)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", nargs="?", help="a `medfm pretrain` out_dir to register"
    )
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", help="alias to move to the new version (e.g. champion)")
    p.add_argument(
        "--version",
        help="instead of registering RUN_DIR, move --alias to this existing version of NAME",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking (and registry) server; default: MLFLOW_TRACKING_URI",
    )
    p.add_argument("--experiment", default="medfm-registry", help="experiment of the new run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medfm register`` with the parsed ``args``; returns the exit status."""
    from medfm.config import ConfigError
    from medfm.features.model_registry import move_alias, register_encoder

    if args.version:
        if not args.alias or args.run_dir:
            raise ConfigError("--version moves an alias: give --name, --alias and no RUN_DIR")
        move_alias(args.name, args.alias, args.version, args.tracking_uri)
        print(f"Alias {args.alias} of {args.name} now names version {args.version}")
        return 0
    if not args.run_dir:
        raise ConfigError("give RUN_DIR (a `medfm pretrain` out_dir), or --version with --alias")
    version = register_encoder(
        args.run_dir, args.name, args.tracking_uri, alias=args.alias, experiment=args.experiment
    )
    alias = f" (alias {args.alias})" if args.alias else ""
    print(f"Registered {args.run_dir} as models:/{args.name}/{version}{alias}")
    return 0
