"""Atomic checkpoints with all a resume needs: weights, optimiser, schedule, step, RNGs.

A checkpoint holds only tensors and plain values (dict, list, tuple, str, int, float, bool,
None), so :func:`load_checkpoint` reads it with ``torch.load(..., weights_only=True)``: a
checkpoint someone shares cannot run code when it is loaded. The RNG states are stored in that
form by :func:`rng_state` and turned back into what Python, numpy and torch expect by
:func:`set_rng_state`.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfm.config import ConfigError
from medfm.io import atomic_path

CHECKPOINT = "checkpoint.pt"
log = logging.getLogger(__name__)


class UnsafeCheckpointError(ConfigError):
    """A checkpoint that does not load with ``weights_only=True``: written by an older medfm
    (whose RNG states were numpy objects) or holding code; it is refused, never executed."""


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "bit_generator": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 words, lossless
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (
            state["bit_generator"],
            keys,
            int(state["pos"]),
            int(state["has_gauss"]),
            float(state["cached_gaussian"]),
        )
    )


def _python_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {"version": int(version), "state": [int(x) for x in internal], "gauss_next": gauss_next}


def _set_python_state(state: dict[str, Any]) -> None:
    random.setstate((int(state["version"]), tuple(state["state"]), state["gauss_next"]))


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values: torch (CPU, a uint8 tensor),
    numpy (``{"bit_generator", "keys" (int64 tensor of the 624 uint32 words), "pos",
    "has_gauss", "cached_gaussian"}``), Python (``{"version", "state" (list of ints),
    "gauss_next"}``) and, when CUDA is available, every visible GPU's
    (``torch.cuda.get_rng_state_all()``, a list of uint8 CPU tensors), so dropout and other
    CUDA-side randomness also resume exactly."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": _python_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`. CUDA states are restored when the checkpoint has them and CUDA
    is available here; a different number of visible GPUs restores the GPUs both have."""
    torch.set_rng_state(state["torch"])
    _set_numpy_state(state["numpy"])
    _set_python_state(state["python"])
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
    """``torch.save`` through :func:`medfm.io.atomic_path`: a kill never leaves half a file.

    ``state`` must hold only tensors and plain values (as :func:`rng_state` and module,
    optimiser and scheduler ``state_dict()`` do), or :func:`load_checkpoint` will refuse it."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none yet.

    Loads with ``weights_only=True``: a file that needs more (one written by an older medfm,
    whose numpy RNG state was a numpy object, or one holding pickled code) raises
    :class:`UnsafeCheckpointError` without running anything in it.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(err), re.IGNORECASE)
        needs = f" (it needs {found.group(1)})" if found else ""
        raise UnsafeCheckpointError(
            f"Checkpoint {path} does not load safely with weights_only=True{needs}: it was "
            "written by an older medfm or holds code, and nothing in it was run. Delete it to "
            "start over, or resume with the older medfm that wrote it."
        ) from err


def checkpoint_tracking(path: str | os.PathLike) -> dict[str, Any] | None:
    """The tracking run a checkpoint was logging to (``{"run_id", "spool_id"}``), or None; read
    memory-mapped, so the weights are not loaded."""
    if not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unsafe or odd checkpoint: load_checkpoint reports it
        return None
    return state.get("tracking")
