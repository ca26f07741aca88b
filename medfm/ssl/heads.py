"""Projection heads that sit on pooled encoder features during self-supervised training only.

- :class:`ProjectionHead`: SimCLR's MLP (Chen et al. 2020), ``Linear-Norm-ReLU-Linear``.
- :class:`DINOHead`: DINO's head (Caron et al. 2021), MLP -> bottleneck -> L2 norm ->
  weight-normalised linear layer to ``out_dim`` prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm1d(dim)
    if kind == "ln":
        return nn.LayerNorm(dim)
    raise ValueError(f"norm={kind!r}: use 'bn' (BatchNorm1d) or 'ln' (LayerNorm)")


class ProjectionHead(nn.Module):
    """``(N, in_dim)`` -> ``(N, out_dim)``: ``Linear -> BatchNorm/LayerNorm -> ReLU -> Linear``.

    ``norm="bn"`` follows SimCLR but needs ``N > 1`` in training; ``"ln"`` works on any batch.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, norm: str = "bn"):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            _norm(norm, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_dim)`` -> ``(N, out_dim)`` projections (SimCLR, Chen et al. 2020)."""
        return self.net(x)


class DINOHead(nn.Module):
    """``(N, in_dim)`` -> ``(N, out_dim)`` logits over prototypes (Caron et al. 2021).

    ``n_layers`` linear layers with GELU (``in -> hidden -> ... -> bottleneck``), L2
    normalisation, then a bias-free weight-normalised ``Linear(bottleneck, out_dim)``. With
    ``norm_last_layer`` its gain is fixed at 1 (``requires_grad=False``), as DINO recommends for
    stability.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 1024,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        n_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        gain.data.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_dim)`` -> ``(N, out_dim)`` prototype logits (DINO, Caron et al. 2021)."""
        x = F.normalize(self.mlp(x), dim=-1)  # (N, bottleneck)
        return self.last_layer(x)  # (N, out_dim)
