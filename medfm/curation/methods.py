"""The five ways to find redundant units, each as a signature of a unit and a reduction rule
(Wolf et al. 2024, "Less is More: Selective Reduction of CT Data for Self-Supervised
Pre-Training", which compares them on CT slices and keeps dHash with Hamming distance 6 in its
released code).

============  ===============================  =============================================
method        signature of a unit              a unit is redundant when
============  ===============================  =============================================
``dhash``     64-bit difference hash           within ``threshold`` bits of a kept unit
``ssim``      the grey slice                   SSIM to the last kept slice >= ``threshold``
``mi``        the grey slice                   normalised MI to the last kept >= ``threshold``
``embedding`` an encoder's pooled features     cosine to a kept unit >= ``threshold``
``every_n``   its position                     its position is not a multiple of ``n``
============  ===============================  =============================================

``--scope volume`` applies the rule within each volume (the paper); ``--scope dataset`` across
all units, through an index (:mod:`medfm.curation.index`) for ``dhash`` and ``embedding``;
``ssim`` and ``mi`` compare consecutive slices only, so they have no dataset scope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from medfm.curation import index, reduce
from medfm.curation.hashing import dhash_batch, hamming, to_uint8
from medfm.curation.similarity import normalized_mi, ssim
from medfm.curation.units import grey

METHODS = ("dhash", "ssim", "mi", "embedding", "every_n")
DEFAULT_THRESHOLDS = {"dhash": 6, "ssim": 0.9, "mi": 0.6, "embedding": 0.95, "every_n": 2}
RANGES = {
    "dhash": (0, 64),
    "ssim": (-1.0, 1.0),
    "mi": (0.0, 1.0),
    "embedding": (-1.0, 1.0),
    "every_n": (1, 10**9),
}
SWEEPS = {
    "dhash": [0, 2, 4, 6, 8, 10, 12, 16, 20],
    "ssim": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98],
    "mi": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "embedding": [0.8, 0.85, 0.9, 0.95, 0.98, 0.99],
    "every_n": [1, 2, 3, 4, 6, 8],
}
Embedder = Callable[[np.ndarray], np.ndarray]


def check_method(method: str, threshold: float, scope: str) -> float:
    """The threshold to use (the method's default for None); ValueError for an unknown method,
    a threshold out of range, or ssim/mi at dataset scope, before any image is read."""
    if method not in METHODS:
        raise ValueError(f"unknown curation method {method!r}; choose one of {', '.join(METHODS)}")
    if scope not in ("volume", "dataset"):
        raise ValueError(f"--scope must be volume or dataset, not {scope!r}")
    if scope == "dataset" and method in ("ssim", "mi"):
        raise ValueError(f"{method} compares consecutive slices: use --scope volume")
    value = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
    low, high = RANGES[method]
    if not low <= value <= high:
        raise ValueError(f"--threshold {value} is out of range for {method}: {low}..{high}")
    return int(value) if method in ("dhash", "every_n") else float(value)


def signatures(method: str, images: np.ndarray, embedder: Embedder | None) -> np.ndarray | list:
    """What ``method`` compares, for each unit of ``images`` ``(N, C, H, W)``."""
    if method == "dhash":
        return dhash_batch([to_uint8(grey(u)) for u in images])
    if method in ("ssim", "mi"):
        return [grey(u) for u in images]
    if method == "embedding":
        if embedder is None:
            raise ValueError("--method embedding needs --encoder (any `medfm evaluate` spec)")
        return embedder(images)
    return np.arange(len(images))


def reduce_group(method: str, signature: np.ndarray | list, threshold: float) -> np.ndarray:
    """Kept positions within one volume (or one series of 2D images), in order."""
    if method == "dhash":
        return reduce.greedy_hash_reduce(np.asarray(signature, np.uint64), int(threshold))
    if method == "ssim":
        return reduce.consecutive_reduce(signature, ssim, threshold)
    if method == "mi":
        return reduce.consecutive_reduce(signature, normalized_mi, threshold)
    if method == "embedding":
        return reduce.greedy_similarity_reduce(np.asarray(signature), threshold)
    return reduce.every_n_reduce(len(signature), int(threshold))


def reduce_dataset(method: str, signature: Sequence, threshold: float) -> np.ndarray:
    """Kept positions among all units of the dataset, in manifest order, found with an index."""
    if method == "dhash":
        return index.dedup_hashes(np.asarray(signature, np.uint64), int(threshold))
    if method == "embedding":
        return index.dedup_embeddings(np.asarray(signature, np.float32), threshold)
    if method == "every_n":
        return reduce.every_n_reduce(len(signature), int(threshold))
    raise ValueError(f"{method} compares consecutive slices: use --scope volume")


def nearest_kept(method: str, signature: Sequence, kept: np.ndarray, unit: int) -> int:
    """The kept unit that a dropped ``unit`` was judged redundant with, for the visual check:
    the nearest kept hash or embedding, else the last kept unit before it."""
    kept = np.asarray(kept)
    if method == "dhash" and len(kept):
        sig = np.asarray(signature, np.uint64)
        return int(kept[int(np.argmin(hamming(sig[kept], sig[unit])))])
    if method == "embedding" and len(kept):
        sig = np.asarray(signature, np.float32)
        sig = sig / np.maximum(np.linalg.norm(sig, axis=1, keepdims=True), 1e-12)
        return int(kept[int(np.argmax(sig[kept] @ sig[unit]))])
    before = kept[kept < unit]
    return int(before[-1]) if len(before) else int(kept[0])
