"""Entry point of the ``medfm`` console script (also ``python -m medfm``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medfm import __version__
from medfm.cli import (
    curate_cmd,
    data_cmds,
    deidentify_cmd,
    demo_cmd,
    evaluate_cmd,
    export_cmd,
    pretrain_cmd,
    register_cmd,
    robustness_cmd,
    shard_cmd,
    sync_cmd,
)
from medfm.config import ConfigError
from medfm.train.errors import NonFiniteLossError

COMMANDS = (
    demo_cmd,
    data_cmds.synthetic,
    data_cmds.ingest,
    deidentify_cmd,
    curate_cmd,
    shard_cmd,
    pretrain_cmd,
    evaluate_cmd,
    robustness_cmd,
    register_cmd,
    export_cmd,
    sync_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``medfm`` argument parser with every command's sub-parser."""
    parser = argparse.ArgumentParser(
        prog="medfm",
        description="Medical imaging foundation models: ingest DICOM/NIfTI/PNG, pre-train ViTs "
        "self-supervised, evaluate downstream heads and audit robustness across "
        "medical centers. Every run is tracked in MLflow.",
        epilog="Start with `medfm demo --quick`. Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"medfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medfm ARGV``; returns the exit status (2 on a config or file error, 1 on a non-finite
    loss)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if extra and (overrides != extra or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:  # KEY=VALUE after options that follow a positional (medfm curate MANIFEST ...)
        args.overrides = [*args.overrides, *overrides]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.run(args) or 0)
    except (ConfigError, FileNotFoundError) as err:
        print(f"medfm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # MONAI wraps a transform's error in "applying transform ..."
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"medfm {args.command}: error: {cause}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"medfm {args.command}: training stopped: {err}", file=sys.stderr)
        return 1


def _user_error(err: BaseException) -> BaseException | None:
    """The config or missing-file error behind ``err``'s chain of causes, if there is one."""
    seen = err.__cause__
    while seen is not None:
        if isinstance(seen, ConfigError | FileNotFoundError):
            return seen
        seen = seen.__cause__
    return None


if __name__ == "__main__":
    raise SystemExit(main())
