"""Self-supervised objectives: each an ``nn.Module`` mapping a batch to ``{"loss": ..., ...}``."""

from medfm.ssl.mae import MAE, build_objective

__all__ = ["MAE", "build_objective"]
