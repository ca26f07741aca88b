"""Pre-training speed, as ratios measured side by side in one run.

1. MAE with the visible-only encoder (medfm.ssl.mae.MAE) against the same model pushing mask tokens
   through the encoder (SimMIM/BEiT style), ViT-S/16 at 224 px and 75 % masking: step-time ratio.
2. Model-FLOP utilisation: FLOPs of a real training step (counted by torch's FlopCounterMode)
   times steps/s, over the fp32 matmul rate of this machine measured in the same run.

    python benchmarks/pretrain_speed.py --batch 8 --steps 5
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from medfm.config import load_config
from medfm.models.backbones import create_backbone
from medfm.ssl.mae import MAE
from medfm.ssl.patches import patchify
from medfm.train.flops import matmul_rate


class MaskTokensInEncoder(MAE):
    """Reference: masked patches replaced by a mask token and run through the whole encoder."""

    def forward(self, batch):
        images = batch["image"]
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, enc.num_prefix_tokens :]
        b, n, _ = x.shape
        mask = torch.zeros(b, n, device=x.device)
        keep = int(n * (1 - self.mask_ratio))
        mask.scatter_(1, torch.rand(b, n).argsort(1)[:, keep:], 1.0)
        token = self.enc_mask_token.expand(b, n, -1)
        x = torch.where(mask.bool().unsqueeze(-1), token, x)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(b, -1, -1)
        x = enc.norm(enc.blocks(torch.cat([cls, x], 1)))
        x = self.decoder_embed(x)
        x = torch.cat([x[:, :1], x[:, 1:] + self.decoder_pos], 1)
        pred = self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))[:, 1:]
        target = patchify(images, self.patch)
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        return {"loss": loss}


def _model(cls, img: int, channels: int):
    cfg = load_config(
        None, ["model.name=vit_small_patch16_224", "model.patch_size=16", "model.depth=null"]
    )
    mae = cls(
        create_backbone(cfg.model, img, channels),
        mask_ratio=0.75,
        decoder_dim=256,
        decoder_depth=2,
        decoder_heads=8,
        norm_pix_loss=False,
    )
    mae.enc_mask_token = torch.nn.Parameter(torch.zeros(1, 1, mae.encoder.embed_dim))
    return mae


def _step_time(model, images, steps: int) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        model({"image": images})["loss"].backward()
        opt.step()

    step()  # warm-up
    with FlopCounterMode(display=False) as counter:
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps, float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--img", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    images = torch.rand(args.batch, 3, args.img, args.img)
    peak = matmul_rate(device, size=1024, seconds=1.0)
    visible = _model(MAE, args.img, 3)
    full = _model(MaskTokensInEncoder, args.img, 3)
    full.load_state_dict(visible.state_dict(), strict=False)
    t_vis, f_vis = _step_time(visible, images, args.steps)
    t_full, f_full = _step_time(full, images, args.steps)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
        f"ViT-S/16, {args.img} px, batch {args.batch}, 75 % masking"
    )
    print(f"fp32 matmul rate (1024^3, this run): {peak / 1e9:8.1f} GFLOP/s")
    print(f"{'':32} {'s/step':>8} {'GFLOP/step':>11} {'img/s':>7} {'MFU':>6}")
    for name, t, f in (
        ("MAE, visible-only encoder", t_vis, f_vis),
        ("mask tokens through encoder", t_full, f_full),
    ):
        print(f"{name:32} {t:8.3f} {f / 1e9:11.1f} {args.batch / t:7.1f} {f / t / peak:6.1%}")
    print(f"speed-up of visible-only over mask tokens: {t_full / t_vis:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
