"""Options several commands share, declared once."""

from __future__ import annotations

import argparse


def add_run_options(p: argparse.ArgumentParser, tracking: bool = True) -> None:
    """``--no-tracking`` (when the command logs to MLflow) and ``--no-progress``."""
    if tracking:
        p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    """Trailing ``KEY=VALUE`` config overrides, applied after the defaults and any recipe."""
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {example}"
    )


def add_salt_option(p: argparse.ArgumentParser) -> None:
    """``--salt``: the key of the HMAC pseudonyms (``medfm.data.ingestion.pseudonym.resolve_salt``
    decides between it, the environment and the saved file)."""
    p.add_argument(
        "--salt",
        help="pseudonym salt (else $MEDFM_PSEUDONYM_SALT, else a random one saved as "
        "OUT/private/pseudonym_salt.key); the same salt gives the same pseudonyms in every run",
    )
