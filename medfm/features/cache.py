"""Features on disk, memory-mapped, keyed by encoder and data.

Extracting features is the slow part of an evaluation; every head, protocol and seed then reuses
them. An entry is one ``.npy`` file named by a hash of (the encoder's key, pooling, the data
settings, the ordered list of image paths with each file's size and modification time), so a new
weights file, a changed image or another pooling makes a new entry and a stale one is never read.
Entries are written atomically (:func:`medfm.io.atomic_path`) and are read back with
``np.load(mmap_mode="r")``. Nothing but the float features is stored: no paths, no labels, no PHI.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medfm.io import atomic_path


def _stat(path: str) -> str:
    file = Path(path.split("#", 1)[0])
    try:
        stat = file.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def feature_key(encoder_key: str, pooling: str, data_settings: dict, paths: Sequence[str]) -> str:
    """A hex digest naming one (encoder, pooling, data settings, images) combination."""
    h = hashlib.sha256()
    h.update(
        json.dumps([encoder_key, pooling, data_settings], sort_keys=True, default=str).encode()
    )
    seen: dict[str, str] = {}
    for path in paths:
        file = path.split("#", 1)[0]
        if file not in seen:
            seen[file] = _stat(path)
        h.update(f"{path}|{seen[file]}\n".encode())
    return h.hexdigest()[:24]


def cached_features(
    cache_dir: str | os.PathLike | None, key: str, compute: Callable[[], np.ndarray]
) -> np.ndarray:
    """``cache_dir/<key>.npy`` memory-mapped if present, else ``compute()`` written there first.

    ``cache_dir=None`` disables the cache (``compute()`` every time).
    """
    if cache_dir is None:
        return np.asarray(compute(), dtype=np.float32)
    path = Path(cache_dir) / f"{key}.npy"
    if not path.is_file():
        features = np.ascontiguousarray(compute(), dtype=np.float32)
        with atomic_path(path) as tmp:  # tmp ends in .npy, so np.save adds no suffix
            np.save(tmp, features)
    return np.load(path, mmap_mode="r")
