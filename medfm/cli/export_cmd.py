"""``medfm export``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``medfm export`` and its options to ``sub``."""
    p = sub.add_parser(
        "export",
        help="write an encoder's weights for plain timm (2D) or MONAI's ViT (3D)",
        description="Convert the encoder artifact of RUN_DIR (encoder.safetensors + config.yaml) "
        "into OUT/model.safetensors and OUT/config.json {architecture, kwargs}, loadable without "
        "medfm: --to timm for 2D encoders (timm.create_model(architecture, pretrained=False, "
        "**kwargs), strict load), --to monai for 3D encoders (monai.networks.nets.ViT(**kwargs); "
        "strict=False, only MONAI's untrained classification_head is missing). Encoders with "
        "model.stem=conv cannot be exported: plain timm cannot build medfm's ConvStem.",
        epilog="Example: medfm export runs/mae --to timm --out runs/mae/timm",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `medfm pretrain` out_dir")
    p.add_argument("--to", required=True, choices=["timm", "monai"], help="target library")
    p.add_argument("--out", required=True, help="folder for model.safetensors and config.json")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medfm export`` with the parsed ``args``; returns the exit status."""
    from medfm.models.export import export_encoder

    weights, config = export_encoder(args.run_dir, args.to, args.out)
    print(f"Wrote {weights} and {config} (load as described by 'load' in {config.name})")
    return 0
