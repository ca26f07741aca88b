"""Write 2D arrays as DICOM, NIfTI or PNG files that MONAI's readers load back identically.

MONAI's ``PydicomReader`` and ``PILReader`` return 2D images as ``(W, H)`` (x first, like NIfTI).
:func:`write_nifti` therefore stores the array x-first, so that all three formats load to the same
tensor. Every write goes to a temporary file that is renamed into place.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medfm.io import atomic_path


def _as_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.size and (image.min() < 0 or image.max() > 255):
        raise ValueError(f"pixel values must lie in 0..255, got {image.min()}..{image.max()}")
    return np.ascontiguousarray(image.astype(np.uint8))


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB image."""
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(_as_uint8(image)).save(tmp, format="PNG")
    return Path(path)


def write_nifti(
    image: np.ndarray, path: str | os.PathLike, spacing: tuple[float, float] = (1.0, 1.0)
) -> Path:
    """Write a grey ``(H, W)`` image as a NIfTI-1 file, x (columns) first, uint8.

    ``spacing`` is (row, column) in mm, as DICOM's PixelSpacing.
    """
    affine = np.diag([spacing[1], spacing[0], 1.0, 1.0])
    with atomic_path(Path(path)) as tmp:
        nib.save(nib.Nifti1Image(_as_uint8(image).T.copy(), affine), tmp)
    return Path(path)


def _dicom_dataset(header: Mapping[str, object]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    return ds


def write_dicom(
    image: np.ndarray,
    path: str | os.PathLike,
    header: Mapping[str, object],
    spacing: tuple[float, float] = (1.0, 1.0),
) -> Path:
    """Write a grey ``(H, W)`` uint8 image as a single-frame 16-bit DICOM file.

    ``header`` maps DICOM keywords (``PatientName``, ``Modality``, ``InstitutionName``, ...) to
    values;
    UIDs not given are generated.
    """
    ds = _dicom_dataset(header)
    ds.StudyInstanceUID = header.get("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = header.get("SeriesInstanceUID", generate_uid())
    ds.ContentDate = header.get("ContentDate", dt.date(2024, 1, 1).strftime("%Y%m%d"))
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.PixelData = _as_uint8(image).astype(np.uint16).tobytes()
    with atomic_path(Path(path)) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)
