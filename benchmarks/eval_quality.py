"""Downstream quality: pre-train on a MedMNIST file within a CPU budget, then run every head.

Pre-trains with ``configs/pretrain/medmnist_2d.yaml`` for ``--minutes`` (or takes ``--encoder``),
then ``medfm.evaluation.run.evaluate`` runs linear, kNN, GDA, prototype, MLP, fine-tuning and
model soups on the official splits, with the ``random:`` baseline of the same architecture and a
raw-pixel logistic regression computed in the same run, and prints the table with 95% CIs.

Acceptance (issue 5): the best head, fine-tuning included, beats the raw-pixel logistic regression.

    python benchmarks/eval_quality.py --data ../shared/data/breastmnist.npz --minutes 10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from medfm.api import pretrain
from medfm.config import load_config
from medfm.evaluation.run import evaluate
from medfm.evaluation.tables import metrics_markdown

ROOT = Path(__file__).resolve().parents[1]
HEADS = "linear,knn,gda,prototype,mlp,finetune,soup"


def _pretrain(data: Path, minutes: float, out: Path, overrides: list[str]) -> Path:
    cfg = load_config(
        ROOT / "configs/pretrain/medmnist_2d.yaml",
        [
            f"data.path={data}",
            f"out_dir={out}",
            f"train.max_minutes={minutes}",
            "tracking.enabled=false",
            "train.progress=false",
            *overrides,
        ],
    )
    start = time.perf_counter()
    _, result = pretrain(cfg)
    print(f"pre-trained {result.steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/breastmnist.npz")
    parser.add_argument("--minutes", type=float, default=10.0, help="pre-training budget")
    parser.add_argument("--encoder", help="skip pre-training: evaluate this encoder")
    parser.add_argument("--heads", default=HEADS)
    parser.add_argument("--protocols", default="full", help="e.g. full;fewshot:1,5,10,20")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="keep the evaluation here")
    parser.add_argument("overrides", nargs="*", help="pre-training KEY=VALUE overrides")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found (see shared/data/README.md)")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "eval"
        encoder = args.encoder or str(
            _pretrain(args.data, args.minutes, Path(tmp) / "enc", args.overrides)
        )
        cfg = load_config(
            None,
            [
                f"eval.heads=[{args.heads}]",
                f"eval.seeds={args.seeds}",
                "eval.bootstrap=1000",
                "tracking.enabled=false",
            ],
        )
        cfg.eval.protocols = args.protocols
        start = time.perf_counter()
        metrics = evaluate(encoder, args.data, cfg, out, progress=False)
        print(f"evaluated in {time.perf_counter() - start:.0f} s\n")
        print(metrics_markdown(metrics, title=f"{args.data.name}: every head"))
    full = {row: m["full"]["test_auc"] for row, m in metrics.items() if "full" in m}
    ours = {row: v for row, v in full.items() if ":" not in row}
    best = max(ours, key=ours.get)
    pixels = full["pixels:linear"]
    print(
        f"best head {best} {ours[best]:.3f} vs raw-pixel logistic regression {pixels:.3f}: "
        f"{'PASS' if ours[best] > pixels else 'FAIL'}; target >= 0.90"
    )


if __name__ == "__main__":
    main()
