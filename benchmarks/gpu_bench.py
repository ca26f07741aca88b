"""GPU figures for one prepared run (see benchmarks/gpu.sh), as ratios measured in the same run.

1. ViT-B/16 MAE (visible-only encoder, 75 % masking) at 224 px under bf16 autocast: images/s and
   MFU, FLOPs counted by torch's FlopCounterMode over the bf16 matmul rate measured here
   (target MFU >= 30 %).
2. A 3D ViT-B MAE (medfm ViT3D, 16^3 patches) on 96^3 patches: images/s and MFU.

    python benchmarks/gpu_bench.py --batch 256 --steps 10
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from medfm.config import load_config
from medfm.models.backbones import create_backbone
from medfm.ssl.mae import MAE
from medfm.train.flops import matmul_rate


def _mae(name: str, size: int, depth_size: int | None) -> MAE:
    cfg = load_config(None, [f"model.name={name}", "model.patch_size=16", "model.depth=null"])
    encoder = create_backbone(cfg.model, size, 1 if depth_size else 3, depth_size)
    return MAE(encoder, mask_ratio=0.75, decoder_dim=512, decoder_depth=8, decoder_heads=16)


def measure(model: MAE, images: torch.Tensor, steps: int, peak: float) -> tuple[float, float]:
    """(images/s, MFU) of forward + backward + AdamW steps under bf16 autocast."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model({"image": images})["loss"]
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return len(images) / seconds, counter.get_total_flops() / seconds / peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batch3d", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_rate(device, size=8192, seconds=2.0)
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}; "
        f"bf16 matmul rate (8192^3, this run): {peak / 1e12:.0f} TFLOP/s"
    )
    cases = (
        ("ViT-B/16 MAE, 224 px", "vit_base_patch16_224", 224, None, args.batch, (3, 224, 224)),
        ("3D ViT-B MAE, 96^3", "vit3d_base", 96, 96, args.batch3d, (1, 96, 96, 96)),
    )
    for label, name, size, depth, batch, shape in cases:
        model = _mae(name, size, depth).to(device)
        images = torch.rand(batch, *shape, device=device)
        rate, mfu = measure(model, images, args.steps, peak)
        print(f"{label:24} batch {batch:4d}: {rate:8.1f} images/s, MFU {mfu:5.1%}")
        del model, images
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
