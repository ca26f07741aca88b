"""Backbones and the encoder artifact."""

from medfm.models.backbones import create_backbone, encode
from medfm.models.encoder_io import load_encoder, save_encoder

__all__ = ["create_backbone", "encode", "load_encoder", "save_encoder"]
