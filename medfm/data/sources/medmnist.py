"""MedMNIST ``.npz`` files (Yang et al. 2023, "MedMNIST v2"), 2D and 3D, with their official splits.

A manifest row addresses one image inside the file as ``<file.npz>#<split>/<index>``; the file is
read once per process and kept memory-mapped-free in a small cache. Labels are kept as stored:
one integer, or ``;``-joined integers for multi-label sets such as ChestMNIST.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import numpy as np

from medfm.data.sources.readers import UnreadableFileError

SPLITS = ("train", "val", "test")


def is_medmnist(path: Path) -> bool:
    """True for an ``.npz`` holding MedMNIST keys (``train_images``, ``train_labels``, ...)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return {"train_images.npy", "train_labels.npy"} <= names


@functools.lru_cache(maxsize=4)
def _arrays(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as err:
        raise UnreadableFileError(f"MedMNIST file cannot be read ({type(err).__name__})") from None


def _label(row: np.ndarray) -> str:
    row = np.asarray(row).ravel()
    return str(int(row[0])) if row.size == 1 else ";".join(str(int(v)) for v in row)


def medmnist_rows(path: Path) -> list[dict]:
    """One partial manifest row per image (id, path, format, shape, label, split)."""
    arrays = _arrays(str(path.resolve()))
    rows = []
    for split in SPLITS:
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None:
            continue
        if labels is None or len(labels) != len(images):
            raise UnreadableFileError(f"{split}_labels missing or not one per image")
        shape = "x".join(map(str, images.shape[1:]))
        for i in range(len(images)):
            rows.append(
                {
                    "path": f"{path.resolve()}#{split}/{i}",
                    "format": "medmnist",
                    "shape": shape,
                    "label": _label(labels[i]),
                    "split": split,
                }
            )
    return rows


def load_medmnist_image(address: str) -> np.ndarray:
    """The image at ``<file.npz>#<split>/<index>``, channel-first, spatial axes x-first.

    2D grey ``(28, 28)`` -> ``(1, 28, 28)``; RGB ``(28, 28, 3)`` -> ``(3, 28, 28)``; 3D
    ``(28, 28, 28)`` -> ``(1, 28, 28, 28)``. Spatial axes are transposed like MONAI's PIL reader.
    """
    path, _, where = address.partition("#")
    split, _, index = where.partition("/")
    image = _arrays(path)[f"{split}_images"][int(index)]
    if image.ndim == 3 and image.shape[-1] == 3:  # RGB 2D
        return np.transpose(image, (2, 1, 0))
    return np.swapaxes(image, 0, 1)[None] if image.ndim == 2 else image[None]
