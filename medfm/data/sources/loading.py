"""Load whatever a manifest ``path`` points at, as a channel-first array.

* ``file.npz#split/index``: an image inside a MedMNIST file;
* ``a.dcm|b.dcm|...`` or a folder holding one series: a DICOM series, ordered and decoded as
  :mod:`medfm.data.sources.dicom_series` does at ingestion;
* a single DICOM file: decoded the same way (a multi-frame file gives ``(X, Y, frames)``);
* ``.npy``: a channel-first float array (``medfm curate`` writes slices of more than one
  channel so);
* NIfTI, PNG, JPEG or TIFF: MONAI ``LoadImage``.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from medfm.data.sources.dicom_series import (
    decode_slice,
    is_dicom_file,
    load_series,
    order_slices,
    read_slice_header,
    series_affine,
    stack_slices,
)
from medfm.data.sources.medmnist import load_medmnist_image

SERIES_SEPARATOR = "|"


@functools.cache
def _monai_loader() -> LoadImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LoadImage(image_only=True, ensure_channel_first=True)


def _dicom_volume(headers: list) -> torch.Tensor:
    """Ordered slices decoded into a channel-first volume; a MONAI ``MetaTensor`` carrying its
    RAS affine when the headers have geometry, so ``spacing`` and ``orientation`` steps see the
    scanner geometry."""
    data = torch.as_tensor(stack_slices([decode_slice(h) for h in headers])[None])
    affine = series_affine(headers)
    return data if affine is None else MetaTensor(data, affine=torch.as_tensor(affine))


def load_path(path: str) -> torch.Tensor:
    """Channel-first float tensor for one manifest ``path`` (a ``MetaTensor`` with its affine
    for NIfTI and DICOM series)."""
    if "#" in path and path.split("#", 1)[0].endswith(".npz"):
        return torch.as_tensor(load_medmnist_image(path).astype(np.float32))
    if SERIES_SEPARATOR in path:
        return _dicom_volume([read_slice_header(Path(p)) for p in path.split(SERIES_SEPARATOR)])
    if is_dicom_file(Path(path)):  # decoded as ingestion did (multi-frame: frames last)
        return torch.as_tensor(load_series([Path(path)])[None])
    if path.endswith(".npy"):  # a channel-first array, as `medfm curate` writes many-channel slices
        return torch.as_tensor(np.load(path, allow_pickle=False).astype(np.float32))
    if Path(path).is_dir():  # a folder holding one DICOM series, ordered as ingestion did
        headers = [read_slice_header(p) for p in sorted(Path(path).iterdir()) if p.is_file()]
        return _dicom_volume(order_slices(headers))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
        return torch.as_tensor(_monai_loader()(path)).float()


class LoadManifestImaged(MapTransform):
    """Dict form of :func:`load_path`: replaces each key's path with its channel-first image.

    A source that is gone (moved or deleted after ingest) raises ``FileNotFoundError`` naming the
    sample by its pseudonymous ``id``, never by its path, which may hold a patient's name."""

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            source = str(d[key])
            if not os.path.exists(source.split("#", 1)[0].split(SERIES_SEPARATOR, 1)[0]):
                raise FileNotFoundError(
                    f"image {d.get('id') or '(no id)'} of the manifest is gone from its source "
                    "(private/source_map.csv has its path): restore it or ingest the data again"
                )
            d[key] = load_path(source)
        return d
