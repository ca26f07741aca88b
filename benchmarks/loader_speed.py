"""Data-loading speed and memory for the ct_3d recipe, as ratios measured side by side in one run.

1. Images/s the DataLoader delivers (decode NIfTI, orientation, 1.5 mm spacing, HU window,
   foreground crop, random patches) with 0, 1 and 2 workers, against the rate at which the
   model's training step (MAE forward + backward + AdamW) consumes them on the same machine;
   their ratio says whether the loader can keep up.
2. The data-wait fraction of a real pre-training run with 2 workers (share of wall time the
   loop waited for the loader), as the engine reports it.
3. Peak resident memory of a pre-training run over a manifest about 3x larger than
   ``data.cache_budget_gb``, next to the budget and the model-only peak (same run, no data cache).

Synthetic CT-like volumes (a body ellipsoid of soft tissue, bone and lung in air, in HU) are
written as NIfTI with 0.8 mm voxels, so resampling has real work to do.

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
from medfm.data.ingest import ingest
from medfm.data.transforms import image_transforms
from medfm.train.pretrain import _batches, load_rows, resolve_data

RECIPE = Path(__file__).parents[1] / "configs" / "pretrain" / "ct_3d.yaml"
CPU = [
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


def loader_rate(cfg, workers: int, steps: int) -> float:
    cfg = cfg.copy()
    cfg.data.num_workers = workers
    rows = load_rows(cfg)
    from medfm.train import distributed as D

    batches = _batches(rows, None, resolve_data(cfg, rows), D.DistInfo())(0)
    it, n = iter(batches), 0
    next(it)  # workers start, first batch
    t0 = time.perf_counter()
    for _ in range(steps):
        n += len(next(it)["image"])
    return n / (time.perf_counter() - t0)


def pretrain_child(args: list[str]) -> dict:
    """A pre-training run in a fresh process: its result and peak RSS (MB, ``VmHWM``; Linux's
    ``ru_maxrss`` would report the parent's peak after fork + exec)."""
    code = (
        "import json,sys;from medfm.config import load_config;"
        "from medfm.train.pretrain import pretrain;"
        f"cfg=load_config({str(RECIPE)!r},sys.argv[1:]);_,r=pretrain(cfg);"
        "print(json.dumps({'steps':r.steps,'rate':r.images_per_second,"
        "'rss_mb':[int(l.split()[1]) for l in open('/proc/self/status')"
        " if l.startswith('VmHWM')][0]/1024}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ct").mkdir()
        write_volumes(root / "ct", args.volumes)
        manifest = ingest([root / "ct"], root / "ingest", salt="b", progress=False).manifest
        base = [*CPU, f"data.manifest={manifest}", f"train.max_steps={args.steps + 1}"]
        cfg = load_config(RECIPE, [*base, f"out_dir={root / 'probe'}", "data.cache=none"])
        rates = {w: loader_rate(cfg, w, args.steps) for w in (0, 1, 2)}
        run = pretrain_child(
            [
                *base,
                f"out_dir={root / 'run'}",
                "data.num_workers=2",
                "data.cache=none",
                f"train.max_steps={args.steps}",
            ]
        )
        waits = [
            json.loads(line).get("train/data_wait")
            for line in (root / "run" / "metrics.jsonl").read_text().splitlines()
        ]
        model_rate = run["rate"]
        print(
            f"ct_3d on {args.volumes} volumes of 160x160x100 at 0.8 mm -> 64^3 patches, "
            f"{torch.get_num_threads()} threads"
        )
        for w, r in rates.items():
            print(
                f"  loader, {w} workers: {r:7.1f} patches/s  = {r / model_rate:5.2f}x the "
                f"training step's consumption ({model_rate:.1f} patches/s, 2 workers)"
            )
        print(f"  data-wait fraction of the training run with 2 workers: {waits[-1]:.1%}")

        rows = load_rows(cfg)
        data_cfg = resolve_data(cfg, rows).data
        first = image_transforms(data_cfg, whole_image=False)(
            {"image": rows[0]["path"], "id": rows[0]["id"]}
        )["image"]
        budget = first.numel() * 4 * len(rows) / 3 / 2**30  # the manifest is 3x the budget
        runs = {
            mode: pretrain_child(
                [
                    *base,
                    f"out_dir={root / mode}",
                    f"data.cache={mode}",
                    f"data.cache_budget_gb={budget:.4f}",
                    "data.num_workers=0",
                    "train.max_steps=3",
                ]
            )["rss_mb"]
            for mode in ("auto", "memory", "none")
        }
        print(
            f"  peak RSS over a manifest 3x data.cache_budget_gb ({budget * 1024:.0f} MB; the "
            f"data {3 * budget * 1024:.0f} MB): auto {runs['auto']:.0f} MB, memory "
            f"{runs['memory']:.0f} MB, no cache {runs['none']:.0f} MB; budget + no-cache "
            f"= {budget * 1024 + runs['none']:.0f} MB"
        )


if __name__ == "__main__":
    main()
