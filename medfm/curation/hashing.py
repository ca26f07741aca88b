"""64-bit difference hashes (dHash) of 2D slices, bit-identical to ``imagehash.dhash``.

Wolf et al. 2024 ("Less is More: Selective Reduction of CT Data for Self-Supervised Pre-Training
of Deep Learning Models with Contrastive Learning Improves Downstream Classification
Performance", Computers in Biology and Medicine 183:109242) write every CT slice as an 8-bit PNG
(its own min-max mapped to 0..255), hash it with ``imagehash.dhash(image, hash_size=8)`` and, in
each volume, drop the slices within Hamming distance 6 of a kept reference slice ("Hash-6", the
best of their reduction methods and the only one in their released code). dHash (Krawetz's
"Kind of Like That") shrinks the grey image to ``(hash_size + 1) x hash_size`` pixels with
Pillow's LANCZOS filter and sets one bit per pixel pair: is the right neighbour brighter.

Why not call imagehash: its cost is Pillow's scalar C resampling loop, one image at a time
(600 to 1,100 slices/s for 512 x 512 on one core of this project's machines). This module
runs the same fixed-point LANCZOS arithmetic as Pillow's ``Resample.c`` as two float64 matrix
products per batch of slices (BLAS), 2 to 3 times faster (benchmarks/curation_speed.py) and
bit-identical: every partial sum is an integer below 2**53, so float64 holds it exactly in any
summation order.
Pillow's pass order and coefficients are version details, so the first call checks this
implementation against the installed Pillow on probe images (two known pass orders) and
falls back to Pillow itself when neither matches.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit images, 32 - 8 - 2
_ROUND = float(1 << (PRECISION_BITS - 1))
_SCALE = float(1 << PRECISION_BITS)
_LANCZOS_SUPPORT = 3.0
_BATCH_PIXELS = 1 << 18  # slices of one shape resampled together: ~2 MiB of float64
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A 2D slice as the 8-bit image the paper hashed: its own min-max mapped to 0..255.

    Wolf et al. 2024 converted each CT slice (Hounsfield units, no windowing) with
    ``(x - min) / (max - min) * 255`` and wrote it as an 8-bit PNG (OpenCV rounds to nearest,
    ties to even); imagehash then read that PNG. This computes the same in float64, in the same
    order of operations, with ``np.rint``. A constant slice becomes zeros. NaN or Inf raise.
    """
    values = np.array(image, dtype=np.float64)  # a copy, worked on in place
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"expected a non-empty 2D slice, got shape {values.shape}")
    low, high = values.min(), values.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("the slice holds NaN or Inf values; it cannot be mapped to 8 bits")
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    values -= low
    values /= high - low
    values *= 255.0
    return np.rint(values, out=values).astype(np.uint8)


def dhash(image: np.ndarray, hash_size: int = 8) -> int:
    """The difference hash of one 2D slice as an int, equal to
    ``int(str(imagehash.dhash(PIL.Image.fromarray(image), hash_size)), 16)`` for a uint8 slice
    (first bit = most significant). Non-uint8 slices go through :func:`to_uint8` first.

    The paper hashed each 8-bit slice with ``imagehash.dhash(..., hash_size=8)``; see the module
    docstring for why this does not call imagehash and how it stays bit-identical.
    """
    hash_size = _check_hash_size(hash_size)
    bits = _dhash_bits([_as_uint8(image)], hash_size)[0]
    pad = (-bits.size) % 8
    return int.from_bytes(np.packbits(bits).tobytes(), "big") >> pad


def dhash_batch(images: Sequence[np.ndarray], hash_size: int = 8) -> np.ndarray:
    """One uint64 difference hash per 2D slice, equal to :func:`dhash` of each.

    uint8 slices are hashed as they are, others (float, int16 HU, ...) go through
    :func:`to_uint8`, as in the paper. Slices of one shape are resampled together. A hash of
    ``hash_size**2`` bits must fit 64 bits, so ``hash_size`` is 2..8 here (the paper used 8).
    """
    hash_size = _check_hash_size(hash_size)
    if hash_size > 8:
        raise ValueError(f"hash_size {hash_size} gives {hash_size**2} bits; uint64 holds 64")
    bits = _dhash_bits([_as_uint8(image) for image in images], hash_size)
    if not len(bits):
        return np.zeros(0, dtype=np.uint64)
    padded = np.zeros((len(bits), 64), dtype=bool)
    padded[:, 64 - hash_size**2 :] = bits
    return np.packbits(padded, axis=1).view(">u8").ravel().astype(np.uint64)


def popcount(values: np.ndarray) -> np.ndarray:
    """The number of set bits of each element of a uint64 array (uint8 counts)."""
    values = np.ascontiguousarray(values, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    per_byte = _POPCOUNT8[values.view(np.uint8)].reshape(*values.shape, 8)
    return per_byte.sum(axis=-1, dtype=np.uint8)


def hamming(a, b) -> np.ndarray:
    """Hamming distances between 64-bit hashes: popcount of ``a XOR b``, numpy broadcasting
    (int64, so that differences of distances cannot wrap around)."""
    xor = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.asarray(popcount(xor), dtype=np.int64)


def _check_hash_size(hash_size: int) -> int:
    if int(hash_size) != hash_size or hash_size < 2:
        raise ValueError(f"hash_size must be an integer >= 2, got {hash_size!r}")
    return int(hash_size)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty 2D slice, got shape {array.shape}")
    return array if array.dtype == np.uint8 else to_uint8(array)


def _dhash_bits(images: list[np.ndarray], hash_size: int) -> np.ndarray:
    """``(N, hash_size**2)`` bools: right pixel brighter than left, row by row (imagehash)."""
    small = np.empty((len(images), hash_size, hash_size + 1), dtype=np.float64)
    order = _pillow_pass_order()
    if order is not None:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        for shape, members in groups.items():
            step = max(1, _BATCH_PIXELS // (shape[0] * shape[1]))
            for s in range(0, len(members), step):
                part = members[s : s + step]
                stack = np.stack([images[i] for i in part], dtype=np.float64)
                small[part] = _lanczos_resize(stack, hash_size + 1, hash_size, order)
    else:
        for i, image in enumerate(images):
            small[i] = _pillow_resize(image, hash_size + 1, hash_size)
    return (small[:, :, 1:] > small[:, :, :-1]).reshape(len(images), hash_size * hash_size)


def _pillow_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (width, height), Image.Resampling.LANCZOS
    )
    return np.asarray(resized)


def _lanczos_resize(
    stack: np.ndarray, width: int, height: int, order: str = "pillow13"
) -> np.ndarray:
    """Pillow's ``resize((width, height), LANCZOS)`` of ``(B, H, W)`` 8-bit values held as
    float64. Each pass rounds to 8 bits, as Pillow's does, so the pass order matters:
    ``"pillow13"`` orders them as Pillow 13's Resample.c (vertical first when the height
    shrinks by more than twice as many pixels as the width), ``"horizontal"`` as older Pillow
    (horizontal first always)."""
    in_height, in_width = stack.shape[1:]
    shrink = in_height - height
    horizontal_first = order == "horizontal" or not (0 < shrink and shrink > 2 * (in_width - width))
    out = stack
    for axis in (2, 1) if horizontal_first else (1, 2):
        size_in, size_out = (in_width, width) if axis == 2 else (in_height, height)
        if size_in == size_out:
            continue  # Pillow skips a pass that keeps the size
        matrix = _pass_matrix(size_in, size_out)
        if axis == 2:  # one 2D product over all rows of the batch
            summed = (out.reshape(-1, size_in) @ matrix.T).reshape(*out.shape[:2], size_out)
        else:
            summed = np.matmul(matrix, out)
        out = np.clip(np.floor((summed + _ROUND) / _SCALE), 0.0, 255.0)
    return out


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


@functools.lru_cache(maxsize=256)
def _pass_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` integer weights of one Pillow LANCZOS pass (``precompute_coeffs``
    and ``normalize_coeffs_8bpc`` of Resample.c, in Python floats = C doubles, libm's sin)."""
    scale = float(np.float32(in_size)) / out_size
    filter_scale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filter_scale
    inverse = 1.0 / filter_scale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - xmin
        weights = [_lanczos((x + xmin - center + 0.5) * inverse) for x in range(count)]
        total = 0.0
        for w in weights:
            total += w
        for x, w in enumerate(weights):
            w = w / total if total != 0.0 else w
            matrix[xx, xmin + x] = int(-0.5 + w * _SCALE) if w < 0 else int(0.5 + w * _SCALE)
    matrix.setflags(write=False)
    return matrix


@functools.cache
def _pillow_pass_order() -> str | None:
    """The pass order (see :func:`_lanczos_resize`) with which the numpy resize equals the
    installed Pillow on probe slices covering both orders, up- and down-scaling; None when
    neither does, and hashing then goes through Pillow itself (same hashes, slower)."""
    rng = np.random.default_rng(0)
    probes = [
        rng.integers(0, 256, shape, dtype=np.uint8)
        for shape in ((8, 9), (5, 3), (64, 64), (300, 40), (40, 300), (97, 211), (512, 512))
    ]
    for order in ("pillow13", "horizontal"):
        if all(
            np.array_equal(
                _lanczos_resize(image[None].astype(np.float64), size + 1, size, order)[0],
                _pillow_resize(image, size + 1, size),
            )
            for image in probes
            for size in (8, 4)
        ):
            return order
    warnings.warn(
        "medfm.curation.hashing: the numpy LANCZOS resize differs from this Pillow's; "
        "hashing through Pillow instead (same hashes, slower)",
        RuntimeWarning,
        stacklevel=4,
    )
    return None
