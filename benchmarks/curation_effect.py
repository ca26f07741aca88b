"""Does curating near-duplicates before pre-training help? (issue 14, quality; Wolf et al. 2024,
"Less is More: Selective Reduction of CT Data for Self-Supervised Pre-Training of Deep Learning
Models with Contrastive Learning Improves Downstream Classification Performance").

Semi-synthetic redundancy: every BreastMNIST train image (``../shared/data/breastmnist.npz``)
becomes ``--copies`` near-duplicates, like adjacent slices of one volume: a sub-pixel shift of up
to 2 px per axis (``scipy.ndimage.shift``, edges repeated), a gain of 1 +- 4 % and an offset of
+-5 grey levels, and Gaussian noise of sigma 2 (0-255). They are written as PNG files with a
manifest (the copies of one image share its ``patient`` and ``series``, rows in random order);
val and test images are written unchanged. Conditions, pre-trained on the train rows, with the
untouched val/test rows added back to each manifest:

* ``full``: the whole expanded train set;
* ``dhash``: ``medfm curate`` with dHash, Hamming threshold 6, ``scope="dataset"``;
* ``ssim``: SSIM has no dataset scope, so ``scope="volume"`` with the copies of one image as one
  group (its ``series``, in random order), threshold 0.9;
* ``random``: a random subset of the full set (per seed) as large as the dHash-curated one.

Each condition is pre-trained with ``configs/pretrain/medmnist_2d.yaml`` for ``--steps`` steps
(equal steps). For equal wall time each curated condition gets the full run's training-loop time
less its curation time (``train.max_minutes``, with the same ``train.max_steps`` and
``train.fit_schedule_to_minutes=false`` so the learning rate schedule is unchanged; a run stops
after the first step past its budget); the full and random runs use no curation time, so their
equal-steps runs are their equal-time runs. A two-step run before them, discarded, keeps the
process's first-time costs out of the full run's time. Every encoder is evaluated by
:func:`medfm.evaluation.run.evaluate` on the original BreastMNIST file (heads linear and knn,
protocol full, test AUC; no baselines). Means ± std (ddof 0) over seeds. This is a report;
nothing here was tuned to its result.

Time: 12 pre-training runs for 2 seeds, about 2.3 s a step on 2 idle cores, so the default
(100 steps) is about 50 min; ``--steps 60 --seeds 2`` took 52 min on 2 shared cores (2.1 to 7 s
a step, set by the other load, not by the condition).

    python benchmarks/curation_effect.py --steps 5 --seeds 1 --copies 2      # a smoke test
    python benchmarks/curation_effect.py --seeds 2 --out runs/curation_effect
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from scipy import ndimage

from medfm.api import pretrain
from medfm.config import load_config
from medfm.curation.run import curate
from medfm.data.ingestion.manifest import read_manifest, write_manifest
from medfm.evaluation.run import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/breastmnist.npz"
RECIPE = ROOT / "configs/pretrain/medmnist_2d.yaml"
CURATED = {"dhash": ("dhash", 6, "dataset"), "ssim": ("ssim", 0.9, "volume")}
CONDITIONS = ("full", "dhash", "ssim", "random")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA, help="BreastMNIST .npz")
    parser.add_argument("--config", type=Path, default=RECIPE, help="pre-training recipe")
    parser.add_argument("--steps", type=int, default=100, help="pre-training steps per run")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (pre-train and eval)")
    parser.add_argument("--copies", type=int, default=8, help="near-duplicates per train image")
    parser.add_argument("--out", type=Path, help="keep images, manifests, encoders here")
    parser.add_argument(
        "--minutes-per-run",
        type=float,
        default=10.0,
        help="guard: train.max_minutes of every pre-training run (default 10)",
    )
    return parser.parse_args()


def near_duplicate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 'adjacent slice': shifted by up to 2 px, intensity drift of a few %, noise sigma 2."""
    moved = ndimage.shift(image.astype(np.float32), rng.uniform(-2, 2, 2), order=1, mode="nearest")
    drifted = moved * (1 + rng.uniform(-0.04, 0.04)) + rng.uniform(-5, 5)
    noisy = drifted + rng.normal(0, 2, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _row(uid: str, path: Path, patient: str, label: int, split: str, series: str = "") -> dict:
    return {
        "id": uid,
        "path": str(path.resolve()),
        "format": "png",
        "shape": "28x28",
        "patient": patient,
        "series": series,
        "center": "breastmnist",
        "label": str(int(label)),
        "split": split,
    }


def expand(npz: Path, folder: Path, copies: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Write the expanded train set and the unchanged val/test images; (train rows, others)."""
    rng = np.random.default_rng(seed)
    arrays = np.load(npz)
    train, others = [], []
    for split in ("train", "val", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"][:, 0]
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            if split != "train":
                path = folder / split / f"{i}.png"
                Image.fromarray(image).save(path)
                others.append(_row(f"{split}{i}", path, f"{split}{i}", label, split))
                continue
            for k in range(copies):
                path = folder / split / f"{i}_{k}.png"
                Image.fromarray(near_duplicate(image, rng)).save(path)
                train.append(_row(f"{i}_{k}", path, str(i), label, split, f"s{i}"))
    order = rng.permutation(len(train))  # groups (series) and the dataset in random order
    return [train[j] for j in order], others


def curate_condition(
    name: str, train_csv: Path, out: Path, data_cfg: DictConfig
) -> tuple[list[dict], dict]:
    """Curate the train-only manifest; the kept rows and the report with its time."""
    method, threshold, scope = CURATED[name]
    start = time.perf_counter()
    report = curate(train_csv, out, data_cfg, method, threshold, scope, progress=False)
    report["seconds"] = time.perf_counter() - start
    return read_manifest(out / "manifest.csv"), report


def pretrain_run(
    args: argparse.Namespace, manifest: Path, out: Path, seed: int, minutes: float
) -> dict:
    """Pre-train the recipe for ``--steps`` steps (or ``minutes``); steps and times."""
    cfg = load_config(
        args.config,
        [
            f"data.manifest={manifest}",
            f"out_dir={out}",
            f"seed={seed}",
            f"train.max_steps={args.steps}",
            f"train.max_minutes={minutes}",
            "train.fit_schedule_to_minutes=false",
            f"train.checkpoint_every={args.steps}",
            f"train.warmup_steps={warmup_steps(args)}",
            "train.monitor_every=0",
            "train.progress=false",
            "tracking.enabled=false",
        ],
    )
    start = time.perf_counter()
    _, result = pretrain(cfg)
    seconds = time.perf_counter() - start
    loop = result.steps * int(cfg.train.batch_size) / max(result.images_per_second, 1e-9)
    return {"steps": result.steps, "pretrain_s": seconds, "loop_s": loop}


def warmup_steps(args: argparse.Namespace) -> int:
    """The recipe's warmup, or a quarter of the steps when the run is shorter than it."""
    warmup = int(load_config(args.config, []).train.warmup_steps)
    return warmup if warmup < args.steps else max(1, args.steps // 4)


def evaluate_run(encoder: Path, npz: Path, seed: int) -> dict:
    """Linear-probe and kNN test AUC on the original BreastMNIST file."""
    cfg = load_config(
        None,
        [
            f"seed={seed}",
            "eval.heads=[linear,knn]",
            "eval.protocols=[full]",
            "eval.seeds=1",
            "eval.baselines=false",
        ],
    )
    metrics = evaluate(encoder, npz, cfg, encoder / "eval", progress=False)
    return {head: float(metrics[head]["full"]["test_auc"]) for head in ("linear", "knn")}


def write_condition(rows: list[dict], others: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest([*rows, *others], path)


def prepare(args: argparse.Namespace, work: Path) -> tuple[dict, dict, list[dict], list[dict]]:
    """Images, the full manifest and the curated ones; (manifests, reports, train, others)."""
    start = time.perf_counter()
    train, others = expand(args.data, work / "images", args.copies)
    print(
        f"expanded {len(train) // args.copies} train images x {args.copies} copies = "
        f"{len(train)} PNGs (+{len(others)} val/test) in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    train_csv = write_manifest(train, work / "train_only.csv")
    data_cfg = load_config(args.config, []).data
    manifests = {"full": write_condition(train, others, work / "full" / "manifest.csv")}
    reports = {"full": {"seen": len(train), "kept": len(train), "kept_fraction": 1.0}}
    reports["full"]["seconds"] = 0.0
    for name in CURATED:
        kept, report = curate_condition(name, train_csv, work / f"curate_{name}", data_cfg)
        manifests[name] = write_condition(kept, others, work / name / "manifest.csv")
        reports[name] = report
        print(
            f"curation {name:5} ({report['method']}, threshold {report['threshold']}, scope "
            f"{report['scope']}): kept {report['kept']}/{report['seen']} = "
            f"{report['kept_fraction']:.3f} in {report['seconds']:.1f} s",
            flush=True,
        )
    return manifests, reports, train, others


def random_manifest(
    train: list[dict], others: list[dict], size: int, seed: int, work: Path
) -> Path:
    rng = np.random.default_rng(1000 + seed)
    pick = sorted(rng.choice(len(train), size, replace=False))
    return write_condition([train[j] for j in pick], others, work / f"random_s{seed}" / "m.csv")


def run_seed(
    args: argparse.Namespace, seed: int, manifests: dict, reports: dict, data: tuple, work: Path
) -> dict:
    """Equal steps for every condition, then equal time for the curated ones; one seed."""
    train, others = data
    manifests = manifests | {
        "random": random_manifest(train, others, reports["dhash"]["kept"], seed, work)
    }
    results: dict[str, dict] = {}
    for name in CONDITIONS:
        out = work / f"enc_{name}_steps_s{seed}"
        results[f"{name}/steps"] = run_one(args, manifests[name], out, seed, args.minutes_per_run)
        show(seed, f"{name}/steps", results[f"{name}/steps"])
    loop_full = results["full/steps"]["loop_s"]
    for name in CONDITIONS:
        key = f"{name}/time"
        budget = loop_full - reports.get(name, {}).get("seconds", 0.0)
        if name not in CURATED:  # no curation time: the same budget as the full run
            results[key] = results[f"{name}/steps"] | {"budget_s": budget}
            continue
        minutes = min(budget / 60, args.minutes_per_run)
        out = work / f"enc_{name}_time_s{seed}"
        results[key] = run_one(args, manifests[name], out, seed, minutes) | {"budget_s": budget}
        show(seed, key, results[key])
    return results


def warm_up(args: argparse.Namespace, manifest: Path, out: Path) -> None:
    """Two discarded steps, so the first timed run (the full set's, which sets the equal-time
    budget) does not pay for the process's first-time costs."""
    cfg = load_config(
        args.config,
        [f"data.manifest={manifest}", f"out_dir={out}", "train.max_steps=2"]
        + ["train.warmup_steps=1", "train.monitor_every=0", "train.progress=false"]
        + ["tracking.enabled=false"],
    )
    pretrain(cfg)


def run_one(args: argparse.Namespace, manifest: Path, out: Path, seed: int, minutes: float) -> dict:
    run = pretrain_run(args, manifest, out, seed, minutes)
    return run | evaluate_run(out, args.data, seed)


def show(seed: int, key: str, run: dict) -> None:
    print(
        f"seed {seed} {key:12}: {run['steps']} steps, pretrain {run['pretrain_s']:.0f} s "
        f"(loop {run['loop_s']:.0f} s, {run['loop_s'] / max(run['steps'], 1):.2f} s/step); "
        f"test AUC linear {run['linear']:.3f}, knn {run['knn']:.3f}",
        flush=True,
    )


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def table(runs: list[dict], reports: dict, mode: str) -> None:
    """One block of the table: every condition at equal steps or at equal time."""
    print(f"\n== equal {mode} ==")
    print(
        f"{'condition':10} {'kept frac':>9} {'units':>6} {'steps':>11} {'pretrain s':>10} "
        f"{'linear AUC':>15} {'kNN AUC':>15}"
    )
    for name in CONDITIONS:
        rs = [r[f"{name}/{mode}"] for r in runs]
        units = reports["dhash"]["kept"] if name == "random" else reports[name]["kept"]
        fraction = units / reports["full"]["seen"]
        steps = "/".join(str(r["steps"]) for r in rs)
        seconds = np.mean([r["pretrain_s"] for r in rs])
        linear, knn = _ms([r["linear"] for r in rs]), _ms([r["knn"] for r in rs])
        print(
            f"{name:10} {fraction:9.3f} {units:6d} {steps:>11} {seconds:10.0f} "
            f"{linear:>15} {knn:>15}"
        )


def verdict(runs: list[dict], mode: str, head: str) -> tuple[str, float, float, float]:
    """dHash - full and dHash - random (means) and the largest seed std of the three."""
    values = {n: [r[f"{n}/{mode}"][head] for r in runs] for n in ("full", "dhash", "random")}
    mean = {n: float(np.mean(v)) for n, v in values.items()}
    std = max(float(np.std(v)) for v in values.values())
    vs_full, vs_random = mean["dhash"] - mean["full"], mean["dhash"] - mean["random"]
    if len(runs) < 2:
        word = "cannot be judged from one seed"
    elif min(vs_full, vs_random) > std:
        word = "helps here"
    elif max(vs_full, vs_random) < -std:
        word = "hurts here"
    else:
        word = "makes no difference beyond seed noise here"
    return word, vs_full, vs_random, std


def conclude(runs: list[dict], steps_equal: bool) -> None:
    print()
    if steps_equal:
        print(
            "The time per step is the same in every condition (a step is one batch, whatever "
            "the set's size), so equal time gives the curated runs their equal-steps steps less "
            "the steps their curation time would have paid for (steps column above)."
        )
    else:
        print("The time per step differs between conditions by 10 % or more (see the runs).")
    for mode in ("steps", "time"):
        for head in ("linear", "knn"):
            word, vs_full, vs_random, std = verdict(runs, mode, head)
            print(
                f"At equal {mode}, {head} test AUC: dHash curation {word}: dHash - full "
                f"{vs_full:+.3f}, dHash - random subset {vs_random:+.3f} (largest seed std "
                f"{std:.3f}, n={len(runs)} seeds)."
            )


def main() -> None:
    args = parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found: put breastmnist.npz in ../shared/data")
    if args.out and args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"--out {args.out} is not empty (a run there would resume); pick another")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        manifests, reports, train, others = prepare(args, work)
        warm_up(args, manifests["full"], work / "warm_up")
        runs = [
            run_seed(args, seed, manifests, reports, (train, others), work)
            for seed in range(args.seeds)
        ]
        for mode in ("steps", "time"):
            table(runs, reports, mode)
        per_step = [
            r[f"{n}/steps"]["loop_s"] / r[f"{n}/steps"]["steps"] for r in runs for n in CONDITIONS
        ]
        same = float(np.std(per_step) / np.mean(per_step)) < 0.1
        print(f"\nloop time per step: {np.mean(per_step):.2f} ± {np.std(per_step):.2f} s")
        conclude(runs, same)
        summary = {"args": {k: str(v) for k, v in vars(args).items()}, "reports": reports}
        (work / "results.json").write_text(
            json.dumps(summary | {"runs": runs}, indent=1, default=str)
        )
    print(f"total wall time {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
