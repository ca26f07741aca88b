"""``medfm sync``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``medfm sync`` and its options to ``sub``."""
    p = sub.add_parser(
        "sync",
        help="send the tracking calls an unreachable MLflow server missed",
        description="Runs journal every MLflow call in OUT/mlflow-spool before sending it; when "
        "the server was down (at the start or mid-run) the calls it missed stay there. Send "
        "them, to the same run, from every mlflow-spool folder under OUT. Calls the server "
        "has taken are marked, so syncing twice sends nothing twice.",
        epilog="Example: medfm sync runs/ct/mae (or --tracking-uri http://host:5000 for a "
        "server that moved)",
    )
    p.add_argument("out", metavar="OUT", help="a run's out_dir, or a folder holding several")
    p.add_argument("--tracking-uri", help="send here instead of the URI each run was started with")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medfm sync`` with the parsed ``args``; 0 when nothing is left unsent, else 1."""
    from medfm.tracking.spool import sync

    results = sync(args.out, getattr(args, "tracking_uri", None), getattr(args, "timeout", 30.0))
    if not results:
        print(f"No tracking journals under {args.out}")
        return 0
    for r in results:
        line = f"{r['journal']}: sent {r['sent']}, left {r['left']}, MLflow run {r['run_id']}"
        print(line + (f" ({r['error']})" if r["error"] else ""))
    sent, left = sum(r["sent"] for r in results), sum(r["left"] for r in results)
    print(f"Sent {sent} tracking calls from {len(results)} journals; {left} left unsent")
    return 1 if left else 0
