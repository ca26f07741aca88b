"""Where a pre-training step's time goes, and which settings buy more images per CPU-second.

For a recipe (default ``configs/pretrain/medmnist_2d.yaml``: SimCLR, conv-stem ViT-Ti/4 at 28
px, batch 128) on real images, one run measures:

1. the split of a step into augmentation (the views), forward, backward and the optimiser step;
2. images/s of variants side by side, interleaved round by round so that the machine's drift
   hits them alike: eager (the default), ``torch.compile`` of the encoder, channels-last input
   (it only matters to the convolutional stem), one intra-op thread instead of all cores, and
   twice the batch (fewer, larger steps);
3. model-FLOP utilisation: the step's FLOPs (torch's FlopCounterMode) times steps/s over this
   machine's fp32 matmul rate, measured in the same run.

    python benchmarks/step_profile.py --rounds 3 --steps 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from medfm.config import load_config
from medfm.models.backbones import create_backbone, encode
from medfm.ssl.losses import info_nce
from medfm.ssl.objectives import build_objective
from medfm.ssl.views import call_views
from medfm.train.flops import matmul_rate

ROOT = Path(__file__).resolve().parents[1]


def _objective(cfg, channels: int):
    torch.manual_seed(0)
    encoder = create_backbone(cfg.model, int(cfg.data.image_size), channels)
    return build_objective(encoder, cfg.ssl, str(cfg.model.pooling))


def _batch(args, n: int, channels: int) -> dict:
    if args.data.is_file():
        images = np.load(args.data)["train_images"][:n]
        x = torch.from_numpy(images).float().div(255)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    else:  # no BreastMNIST here: random images of the same shape
        x = torch.rand(n, channels, 28, 28)
    return {"image": x.contiguous(), "sample_seed": torch.arange(n)}


def phases(objective, batch: dict, steps: int) -> dict[str, float]:
    """Mean seconds per step of each phase of a contrastive step (SimCLR-style objectives)."""
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    total = {"augmentation": 0.0, "forward": 0.0, "backward": 0.0, "optimiser": 0.0}
    for step in range(steps + 1):
        t0 = time.perf_counter()
        v1, v2 = call_views(objective.views, batch["image"], batch["sample_seed"] + step)
        t1 = time.perf_counter()
        z = objective.projector(encode(objective.encoder, torch.cat([v1, v2]), "mean"))
        loss = info_nce(*z.chunk(2), objective.temperature)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if step:  # the first step warms the allocator up
            for key, (a, b) in zip(total, ((t0, t1), (t1, t2), (t2, t3), (t3, t4)), strict=True):
                total[key] += (b - a) / steps
    return total


def images_per_second(objective, batch: dict, steps: int, threads: int | None = None) -> float:
    """Median images/s of ``steps`` full training steps (after one warm-up step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    times = []
    try:
        for step in range(steps + 1):
            t0 = time.perf_counter()
            out = objective({**batch, "sample_seed": batch["sample_seed"] + step})
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return len(batch["image"]) / float(np.median(times[1:]))


def step_flops(objective, batch: dict) -> float:
    """FLOPs of one forward + backward step."""
    with FlopCounterMode(display=False) as counter:
        objective(batch)["loss"].backward()
    objective.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/pretrain/medmnist_2d.yaml")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/breastmnist.npz")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    args = parser.parse_args()
    cfg = load_config(args.config, ["data.channels=1", "data.image_size=28"])
    batch_size = int(cfg.train.batch_size)
    batch, double = _batch(args, batch_size, 1), _batch(args, 2 * batch_size, 1)
    eager = _objective(cfg, 1)
    split = phases(eager, batch, args.steps)
    total = sum(split.values())
    print(f"one step of {batch_size} images ({cfg.ssl.objective}, {total * 1e3:.0f} ms):")
    for name, seconds in split.items():
        print(f"  {name:<13} {seconds * 1e3:7.0f} ms  {seconds / total:6.1%}")
    compiled = _objective(cfg, 1)
    compiled.encoder.compile()
    channels_last = {**batch, "image": batch["image"].to(memory_format=torch.channels_last)}
    variants = {
        "eager (default)": lambda: images_per_second(eager, batch, args.steps),
        "torch.compile encoder": lambda: images_per_second(compiled, batch, args.steps),
        "channels-last input": lambda: images_per_second(eager, channels_last, args.steps),
        "1 intra-op thread": lambda: images_per_second(eager, batch, args.steps, threads=1),
        f"batch {2 * batch_size}": lambda: images_per_second(eager, double, args.steps),
    }
    start = time.perf_counter()
    images_per_second(compiled, batch, 1)  # compiles here, outside the timed rounds
    print(f"torch.compile took {time.perf_counter() - start:.0f} s")
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, measure in variants.items():
            rates[name].append(measure())
    base = float(np.median(rates["eager (default)"]))
    print(f"\n{'variant':<24} {'images/s':>9} {'vs eager':>9}   (median of {args.rounds} rounds)")
    for name, values in rates.items():
        print(f"{name:<24} {np.median(values):9.1f} {np.median(values) / base:9.2f}x")
    flops, peak = step_flops(eager, batch), matmul_rate(torch.device("cpu"))
    mfu = flops * base / batch_size / peak
    print(
        f"\nstep FLOPs {flops / 1e9:.0f} G; fp32 matmul rate {peak / 1e9:.0f} GFLOP/s; "
        f"MFU of the eager step {mfu:.0%}"
    )


if __name__ == "__main__":
    main()
