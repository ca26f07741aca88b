"""Atomic checkpoints with all a resume needs: weights, optimiser, schedule, step, RNGs."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfm.io import atomic_path

CHECKPOINT = "checkpoint.pt"
log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """This process's RNG states: torch (CPU), numpy, Python and, when CUDA is available, every
    visible GPU's (``torch.cuda.get_rng_state_all()``, a list of uint8 CPU tensors), so dropout
    and other CUDA-side randomness also resume exactly."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`. CUDA states are restored when the checkpoint has them and CUDA
    is available here; a different number of visible GPUs restores the GPUs both have."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        states = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda]
        n = min(len(states), torch.cuda.device_count())
        if len(states) != torch.cuda.device_count():
            log.warning(
                "Checkpoint has CUDA RNG states of %d GPUs, this process sees %d; restoring %d",
                len(states),
                torch.cuda.device_count(),
                n,
            )
        for device, s in enumerate(states[:n]):
            torch.cuda.set_rng_state(s, device)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` through :func:`medfm.io.atomic_path`: a kill never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none yet.

    Uses ``weights_only=False`` because the numpy RNG state is a numpy object (the CUDA RNG
    states are plain uint8 tensors, which ``weights_only=True`` would load too); only load
    checkpoints this run (or one you trust) wrote.
    """
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
