"""Fixed 2D and 3D sine-cosine position embeddings.

Vaswani et al. 2017, in the 2D form used by MAE (He et al. 2022) and its 3D extension (one
block of channels per spatial axis).
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(len(positions), dim)``: half sines, half cosines at geometric frequencies."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """``(1 + grid_h * grid_w if cls_token else grid_h * grid_w, dim)``, row-major patches.

    Half the channels encode the row, half the column; the class token gets zeros.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())], 1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb


def _axis_dims(dim: int, n_axes: int) -> list[int]:
    """Split ``dim`` into ``n_axes`` even blocks, as equal as possible, the first ones larger."""
    if dim % 2 or dim < 2 * n_axes:
        raise ValueError(
            f"{n_axes}D sin-cos embedding needs an even dim >= {2 * n_axes}, got {dim}"
        )
    base, extra = divmod(dim // 2, n_axes)
    return [2 * (base + (axis < extra)) for axis in range(n_axes)]


def sincos_3d(dim: int, grid_d: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """``(grid_d * grid_h * grid_w, dim)``, patches row-major in ``(d, h, w)``, no class token.

    The channels are three consecutive blocks encoding depth, row and column, each
    ``[sines | cosines]`` of :func:`sincos_1d`. When ``dim % 6 == 0`` every block has ``dim / 3``
    channels and the table equals MONAI's ``build_sincos_position_embedding(grid, dim, 3)`` up to
    the order of the blocks (MONAI puts the second axis first: ``[h, d, w]`` in our names). Any
    other even ``dim`` (e.g. an MAE decoder width of 128) is split into even blocks as equally as
    possible, the first blocks one pair larger.

    Example:
        >>> sincos_3d(192, 4, 4, 4).shape
        torch.Size([64, 192])
    """
    sizes = _axis_dims(dim, 3)
    axes = torch.meshgrid(
        torch.arange(grid_d), torch.arange(grid_h), torch.arange(grid_w), indexing="ij"
    )
    return torch.cat([sincos_1d(s, a.flatten()) for s, a in zip(sizes, axes, strict=True)], dim=1)
