"""Data-loading speed and memory for the ct_3d and pathology_2d recipes, as ratios measured side
by side in one run.

1. Images/s the DataLoader delivers with 0, 1 and 2 workers (ct_3d: decode NIfTI, orientation,
   1.5 mm spacing, HU window, foreground crop, random patches; pathology_2d: decode PNG tiles,
   scale, resize, stain augmentation), against the rate at which the recipe's training step
   (forward + backward + AdamW, model shrunk for CPU) consumes them on the same machine; their
   ratio says whether the loader keeps up.
2. The data-wait fraction of a real pre-training run with 2 workers (share of wall time the
   loop waited for the loader, worker start-up included), as the engine reports it.
3. Peak resident memory of a pre-training run over a manifest about 3x larger than
   ``data.cache_budget_gb``, next to the budget and the model-only peak (same run, no data cache).

Synthetic CT-like volumes (a body ellipsoid of soft tissue, bone and lung in air, in HU) are
written as NIfTI with 0.8 mm voxels, so resampling has real work to do; synthetic H&E-coloured
RGB tiles as 256 px PNG.

    python benchmarks/loader_speed.py --volumes 24 --steps 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medfm.config import load_config
from medfm.data.ingestion.ingest import ingest
from medfm.data.transforms.compose import image_transforms
from medfm.train.pretrain import _batches, load_rows, resolve_data

RECIPES = Path(__file__).parents[1] / "configs" / "pretrain"
CPU_CT = [
    "model.name=vit3d_tiny",
    "model.depth=4",
    "model.patch_size=16",
    "data.patch.size=[64,64,64]",
    "data.patch.samples_per_volume=2",
    "ssl.decoder_dim=64",
    "ssl.decoder_depth=1",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.progress=false",
    "tracking.enabled=false",
]
CPU_PATHOLOGY = [
    "model.depth=2",
    "ssl.n_local_crops=2",
    "ssl.dino_out_dim=1024",
    "ssl.dino_hidden_dim=512",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.progress=false",
    "tracking.enabled=false",
]


def write_volumes(folder: Path, n: int, shape=(200, 200, 150)) -> None:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    for i in range(n):
        radius = (grid**2 / np.array([0.8, 0.6, 0.9])[:, None, None, None] ** 2).sum(0)
        hu = np.where(radius < 1, 40.0, -1000.0) + rng.normal(0, 20, shape)
        hu[(radius < 0.5) & (grid[0] > 0.1 * (i % 3))] = -700.0  # "lung"
        hu[(radius > 0.85) & (radius < 1)] = 700.0  # "bone"
        nib.Nifti1Image(hu.astype(np.int16), np.diag([0.8, 0.8, 0.8, 1.0])).to_filename(
            folder / f"ct_{i:03d}.nii"
        )


def write_tiles(folder: Path, n: int, size: int = 256) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(n):
        h = rng.random((size, size, 1)) ** 3  # haematoxylin density
        rgb = 255 * (1 - h * np.array([0.35, 0.6, 0.25]) - 0.2 * rng.random((size, size, 1)))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(folder / f"tile_{i:04d}.png")


def loader_rate(cfg, workers: int, steps: int) -> float:
    from medfm.train import distributed as D

    cfg = cfg.copy()
    cfg.data.num_workers = workers
    rows = load_rows(cfg)
    batches = _batches(rows, None, resolve_data(cfg, rows), D.DistInfo())(0)
    it, n = iter(batches), 0
    next(it)  # workers start, first batch
    t0 = time.perf_counter()
    for _ in range(steps):
        n += len(next(it)["image"])
    return n / (time.perf_counter() - t0)


def pretrain_child(recipe: Path, args: list[str]) -> dict:
    """A pre-training run in a fresh process: its result and peak RSS (MB, ``VmHWM``; Linux's
    ``ru_maxrss`` would report the parent's peak after fork + exec)."""
    code = (
        "import json,sys;from medfm.config import load_config;"
        "from medfm.train.pretrain import pretrain;"
        f"cfg=load_config({str(recipe)!r},sys.argv[1:]);_,r=pretrain(cfg);"
        "print(json.dumps({'steps':r.steps,'rate':r.images_per_second,"
        "'rss_mb':[int(l.split()[1]) for l in open('/proc/self/status')"
        " if l.startswith('VmHWM')][0]/1024}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def speed(name: str, recipe: Path, base: list[str], root: Path, steps: int, workers: int) -> None:
    cfg = load_config(recipe, [*base, f"out_dir={root / 'probe'}", "data.cache=none"])
    rates = {w: loader_rate(cfg, w, steps) for w in sorted({0, 1, 2, workers})}
    run = pretrain_child(
        recipe, [*base, f"out_dir={root / name}", f"data.num_workers={workers}", "data.cache=none"]
    )
    lines = (root / name / "metrics.jsonl").read_text().splitlines()
    wait = [json.loads(line)["train/data_wait"] for line in lines if "train/data_wait" in line]
    print(f"{name}: {torch.get_num_threads()} threads")
    for w, r in rates.items():
        print(
            f"  loader, {w} workers: {r:7.1f} images/s = {r / run['rate']:5.2f}x the training "
            f"step's consumption ({run['rate']:.1f} images/s)"
        )
    print(f"  data-wait fraction of {steps} training steps, {workers} workers: {wait[-1]:.1%}")


def memory(recipe: Path, base: list[str], root: Path) -> None:
    cfg = load_config(recipe, [*base, f"out_dir={root / 'probe'}"])
    rows = load_rows(cfg)
    data_cfg = resolve_data(cfg, rows).data
    first = image_transforms(data_cfg, whole_image=False)(
        {"image": rows[0]["path"], "id": rows[0]["id"]}
    )["image"]
    budget = first.numel() * 4 * len(rows) / 3 / 2**30  # the manifest is 3x the budget
    rss = {
        mode: pretrain_child(
            recipe,
            [
                *base,
                f"out_dir={root / ('mem_' + mode)}",
                f"data.cache={mode}",
                f"data.cache_budget_gb={budget:.4f}",
                "data.num_workers=0",
                "train.max_steps=3",
            ],
        )["rss_mb"]
        for mode in ("auto", "memory", "none")
    }
    print(
        f"ct_3d peak RSS, manifest 3x data.cache_budget_gb={budget * 1024:.0f} MB (data "
        f"{3 * budget * 1024:.0f} MB): auto {rss['auto']:.0f} MB, memory {rss['memory']:.0f} "
        f"MB, no cache {rss['none']:.0f} MB; budget + no-cache {budget * 1024 + rss['none']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=24)
    parser.add_argument("--tiles", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="workers of the training run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for kind, write, n in (
            ("ct", write_volumes, args.volumes),
            ("tiles", write_tiles, args.tiles),
        ):
            (root / kind).mkdir()
            write(root / kind, n)
        ct = ingest([root / "ct"], root / "ct_ingest", salt="b", progress=False).manifest
        tiles = ingest([root / "tiles"], root / "tile_ingest", salt="b", progress=False).manifest
        steps = f"train.max_steps={args.steps + 1}"
        ct_base = [*CPU_CT, f"data.manifest={ct}", steps]
        speed("ct_3d", RECIPES / "ct_3d.yaml", ct_base, root, args.steps, args.workers)
        path_base = [*CPU_PATHOLOGY, f"data.manifest={tiles}", steps]
        speed(
            "pathology_2d", RECIPES / "pathology_2d.yaml", path_base, root, args.steps, args.workers
        )
        memory(RECIPES / "ct_3d.yaml", ct_base, root)


if __name__ == "__main__":
    main()
