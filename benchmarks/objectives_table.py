"""Every objective against its random-init twin at a fixed step budget: one table, over seeds.

For each objective (its recipe: ``configs/pretrain/medmnist_2d.yaml`` plus the objective's own
settings below) and each seed, pre-train for exactly ``--steps`` optimiser steps (steps, not
minutes, so the table does not depend on the machine's speed), then run ``medfm evaluate``'s one
pipeline (:func:`medfm.evaluation.run.evaluate`) with the heads ``linear``, ``knn`` and
``finetune`` and ``dr_tune`` (fine-tuning with DR-Tune's distribution regularisation, under the
same budget). The random-init rows are the same architecture at the same seed, fine-tuned under
the same budget and early stopping (without layer-wise LR decay, as ``random:finetune`` in
``medfm evaluate``); the raw-pixel row is logistic regression on the pixels. Prints one table,
mean ± std over seeds, with steps, images/s and wall time per objective.

    python benchmarks/objectives_table.py --data ../shared/data/breastmnist.npz --steps 100 \
        --seeds 0 1 2
    python benchmarks/objectives_table.py --data phantoms --steps 100   # the embedded phantoms
    python benchmarks/objectives_table.py --objectives mae --steps 600 --set model.stem=patch

``--data phantoms`` writes the embedded multi-center phantoms (4 classes, 3 centers, 28 px) as a
MedMNIST-format file, split by patient, and runs the same table on it. ``--set`` changes the
recipe for every row and for the random twin alike (the twin is always the same architecture).

Each recipe is a starting point, not a sweep: the temperatures, crops and mask ratios of each
paper, at the 28-pixel scale (DINO's local crops are 12 pixels, 3 x 3 patches).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from medfm.api import pretrain
from medfm.config import load_config
from medfm.evaluation.run import evaluate

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/pretrain/medmnist_2d.yaml"
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "mae": ("ssl.objective=mae", "ssl.mask_ratio=0.75", "train.lr=1.5e-3"),
    "simclr": ("ssl.objective=simclr",),
    "dino": (
        "ssl.objective=dino",
        "ssl.local_crop_size=12",
        "ssl.n_local_crops=4",
        "ssl.crop_scale=[0.4,1.0]",
        "train.lr=5e-4",
    ),
    "hybrid": ("ssl.objective=hybrid", "ssl.mask_ratio=0.75"),
    "dinov2": ("ssl.objective=dinov2", "ssl.local_crop_size=12", "train.lr=5e-4"),
    "cae": ("ssl.objective=cae", "ssl.mask_ratio=0.5", "train.lr=1.5e-3"),
    "sit": ("ssl.objective=sit",),
}
HEADS = ("linear", "knn", "finetune", "dr_tune")
# each head's random-init row (DR-Tune regularises towards pre-trained features, which a random
# encoder does not have: its baseline is plain fine-tuning from scratch)
TWIN = {"linear": "linear", "knn": "knn", "finetune": "finetune", "dr_tune": "finetune"}


def _run(name: str, overrides: tuple[str, ...], seed: int, out: Path, args, baselines: bool):
    """Pre-train one objective at one seed and evaluate it: AUCs, steps, images/s, seconds, and
    with ``baselines`` the random-init twin's and raw pixels' AUCs (every objective trains the
    same architecture, so the twin of one seed is the same for all and is evaluated once)."""
    cfg = load_config(
        RECIPE,
        [
            f"data.path={args.data}",
            f"out_dir={out}",
            f"seed={seed}",
            f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch}",
            f"train.warmup_steps={max(1, args.steps // 10)}",
            "train.monitor_every=0",
            "tracking.enabled=false",
            "train.progress=false",
            *overrides,
            *args.set,
        ],
    )
    start = time.perf_counter()
    _, result = pretrain(cfg)
    seconds = time.perf_counter() - start
    cfg = _eval_cfg(seed, args, baselines)
    metrics = evaluate(out, args.data, cfg, out / "eval", progress=False)
    run = {h: metrics[h]["full"]["test_auc"] for h in HEADS}
    run |= {"steps": result.steps, "images/s": result.images_per_second, "seconds": seconds}
    if baselines:
        run["baselines"] = {
            "random init": {h: metrics[f"random:{TWIN[h]}"]["full"]["test_auc"] for h in HEADS},
            "raw pixels": {"linear": metrics["pixels:linear"]["full"]["test_auc"]},
        }
    return run


def phantoms_npz(path: Path, cases_per_center: int = 100, images_per_case: int = 3) -> Path:
    """The embedded phantoms (:mod:`medfm.data.synthetic`) at 28 px as a MedMNIST ``.npz``,
    patients split 70/10/20 into train/val/test."""
    from medfm.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(
        cases_per_center=cases_per_center, images_per_case=images_per_case, size=28
    )
    items = list(generate(spec))
    cases = sorted({item.case for item in items})
    order = np.random.default_rng(0).permutation(len(cases))
    split = {
        cases[i]: ("train" if r < 0.7 else "val" if r < 0.8 else "test")
        for r, i in zip(np.arange(len(cases)) / len(cases), order, strict=True)
    }
    arrays = {}
    for name in ("train", "val", "test"):
        chosen = [item for item in items if split[item.case] == name]
        arrays[f"{name}_images"] = np.stack([item.image for item in chosen])
        arrays[f"{name}_labels"] = np.array([[item.label] for item in chosen])
    np.savez_compressed(path, **arrays)
    return path


def _eval_cfg(seed: int, args, baselines: bool):
    return load_config(
        None,
        [
            f"seed={seed}",
            f"eval.heads=[{','.join(HEADS)}]",
            f"eval.baselines={baselines}",
            f"finetune.steps={args.finetune_steps}",
        ],
    )


def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "–"


def _print_table(rows: dict[str, list[dict]]) -> None:
    header = f"{'':12} " + " ".join(f"{h:>14}" for h in HEADS)
    header += f" {'steps':>6} {'img/s':>6} {'s':>6}"
    print(header)
    print("-" * len(header))
    for name, runs in rows.items():
        cells = " ".join(f"{_cell([r.get(h) for r in runs]):>14}" for h in HEADS)
        extra = ""
        if "steps" in runs[0]:
            extra = (
                f" {np.mean([r['steps'] for r in runs]):>6.0f}"
                f" {np.mean([r['images/s'] for r in runs]):>6.0f}"
                f" {np.mean([r['seconds'] for r in runs]):>6.0f}"
            )
        print(f"{name:12} {cells}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=str(ROOT.parent / "shared/data/breastmnist.npz"),
        help="a MedMNIST .npz, or 'phantoms' for the embedded multi-center phantoms",
    )
    parser.add_argument("--objectives", nargs="+", default=["mae", "simclr", "dino", "hybrid"])
    parser.add_argument("--steps", type=int, default=100, help="pre-training steps (fixed)")
    parser.add_argument("--batch", type=int, default=128, help="pre-training batch (fixed)")
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="recipe overrides for every row and its random twin, e.g. model.stem=patch",
    )
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {name: [] for name in args.objectives}
    baselines: dict[str, list[dict]] = {"random init": [], "raw pixels": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_name = Path(args.data).stem
        phantoms = args.data == "phantoms"
        args.data = phantoms_npz(Path(tmp) / "phantoms.npz") if phantoms else Path(args.data)
        if not args.data.is_file():
            raise SystemExit(f"{args.data} not found (see shared/data/README.md)")
        for seed in args.seeds:
            for i, name in enumerate(args.objectives):
                out = Path(tmp) / f"{name}-{seed}"
                run = _run(name, OBJECTIVES[name], seed, out, args, baselines=i == 0)
                rows[name].append(run)
                for base, values in run.pop("baselines", {}).items():
                    baselines[base].append(values)
                aucs = ", ".join(f"{h} {run[h]:.3f}" for h in HEADS)
                print(f"seed {seed} {name}: {aucs}; {baselines['random init'][-1]}", flush=True)
    print(
        f"\n{data_name} test AUC, {args.steps} pre-training steps of {args.batch} images, "
        f"fine-tuning at most {args.finetune_steps} steps, seeds {args.seeds} (mean ± std)"
        f"{', with ' + ' '.join(args.set) if args.set else ''}\n"
    )
    _print_table({**rows, **baselines})
    for name, runs in rows.items():
        for head in HEADS:
            gains = [r[head] - b[head] for r, b in zip(runs, baselines["random init"], strict=True)]
            print(f"{name}: {head} − random:{TWIN[head]} {np.mean(gains):+.3f}", end="; ")
        print()


if __name__ == "__main__":
    main()
