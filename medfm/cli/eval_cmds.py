"""``medfm evaluate`` and ``medfm robustness``."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder",
        required=True,
        help="encoder artifact: a pretrain out_dir or its encoder.safetensors; prefix "
        "with random: for the same architecture at random initialisation",
    )
    p.add_argument("--data", required=True, help="manifest.csv (or its folder) with a split column")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed (random-init weights)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="eval.* / robustness.* / tracking.* overrides, e.g. eval.heads=[linear]",
    )


def _features(args: argparse.Namespace):
    from medfm.config import load_config
    from medfm.eval.runner import encoder_features
    from medfm.tracking.base import make_logger

    cfg = load_config(
        None,
        [*args.overrides, f"out_dir={args.out}"]
        + (["tracking.enabled=false"] if args.no_tracking else []),
    )
    random_init = args.encoder.startswith("random:")
    path = args.encoder.removeprefix("random:")
    table, _ = encoder_features(
        path,
        args.data,
        random_init=random_init,
        seed=args.seed,
        batch_size=int(cfg.eval.batch_size),
    )
    logger = make_logger(cfg.tracking, args.out, run_name=f"{args.command}")
    logger.log_params({"encoder": args.encoder, "data": args.data})
    return table, cfg, logger


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="downstream heads on frozen features: test AUC",
        description="Extract features of every manifest row, fit each head in eval.heads on the "
        "train split (hyper-parameters chosen on val) and report test AUC and accuracy "
        "in OUT/metrics.json.",
    )
    _common(p)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from medfm.eval.runner import run_evaluate

    table, cfg, logger = _features(args)
    metrics = run_evaluate(table, cfg, args.out, logger)
    logger.close()
    print(json.dumps(metrics, indent=2))
    return 0


def _add_robustness(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "robustness",
        help="robustness index: does the encoder see the center or the biology?",
        description="Robustness index of the encoder's features on the manifest, in both published "
        "variants: ratio (de Jong et al. 2025; above 1 biology dominates) and normalized "
        "(PathoROB SO/(SO+OS); 0.5 neutral). Same-patient neighbours are excluded. "
        "Writes OUT/robustness.json and OUT/embedding_map.png.",
    )
    _common(p)
    p.add_argument("--k", type=int, help="neighbours per sample (default robustness.k)")
    p.set_defaults(run=_run_robustness)


def _run_robustness(args: argparse.Namespace) -> int:
    from medfm.eval.runner import run_robustness

    table, cfg, logger = _features(args)
    result = run_robustness(table, int(args.k or cfg.robustness.k), args.out, logger)
    logger.close()
    print(json.dumps(result, indent=2))
    return 0


evaluate = SimpleNamespace(add_parser=_add_evaluate)
robustness = SimpleNamespace(add_parser=_add_robustness)
