"""Self-supervised objectives: each an ``nn.Module`` mapping a batch to ``{"loss": ..., ...}``."""

from medfm.ssl.mae import MAE
from medfm.ssl.objectives import OBJECTIVES, build_objective

__all__ = ["MAE", "OBJECTIVES", "build_objective"]
