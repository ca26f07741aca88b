"""Backbones and the encoder artifact."""

from medfm.models.backbones import build_backbone, encode
from medfm.models.encoder_io import load_encoder, save_encoder

__all__ = ["build_backbone", "encode", "load_encoder", "save_encoder"]
