"""Read one file's pixels (through MONAI ``LoadImage``) and its non-PHI header fields.

DICOM headers are read with pydicom, stopping before the pixels; only the fields listed in
:data:`SAFE_DICOM_FIELDS` and the identifiers that are pseudonymised straight away ever leave here.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from pathlib import Path

import numpy as np
from monai.transforms import LoadImage

# MONAI logs this on every DICOM read on machines without nvImageCodec; it is not actionable.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

SUFFIX_FORMATS = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
}
MONAI_READERS = {
    "dicom": "PydicomReader",
    "nifti": "NibabelReader",
    "png": "PILReader",
    "jpeg": "PILReader",
    "tiff": "PILReader",
}
SAFE_DICOM_FIELDS = ("Modality", "Manufacturer", "ManufacturerModelName")
# Identifiers that are pseudonymised before use; never stored as they are.
DICOM_IDENTIFIERS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "InstitutionName",
    "StationName",
)


class UnreadableFileError(ValueError):
    """A file cannot be used; the message says why."""


def file_format(path: Path) -> str | None:
    """``"dicom"``, ``"nifti"``, ``"png"``, ... from the suffix, or ``None`` if unsupported."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return SUFFIX_FORMATS.get(path.suffix.lower())


@dataclasses.dataclass
class FileInfo:
    """What ingestion keeps from a file: geometry and header values (identifiers still raw)."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    header: dict[str, str]


def read_dicom_header(path: Path) -> dict[str, str]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises many types for broken files
        raise UnreadableFileError(f"not a readable DICOM file ({type(err).__name__})") from None
    header = {k: str(ds.get(k, "") or "") for k in SAFE_DICOM_FIELDS + DICOM_IDENTIFIERS}
    spacing = ds.get("PixelSpacing")
    header["PixelSpacing"] = "\\".join(str(float(v)) for v in spacing) if spacing else ""
    return header


@functools.cache
def _loader(fmt: str) -> LoadImage:
    return LoadImage(reader=MONAI_READERS[fmt], image_only=False)


def read_pixels(path: Path, fmt: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """Load with MONAI's reader for ``fmt``; return the array (spatial dims first) and spacing."""
    try:
        with warnings.catch_warnings():
            # 2D DICOM without ImageOrientationPatient: MONAI falls back to identity, as we want.
            warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
            image, meta = _loader(fmt)(str(path))
    except Exception as err:
        raise UnreadableFileError(f"{fmt} reader failed ({type(err).__name__})") from None
    array = np.asarray(image)
    if fmt == "nifti":  # pixdim[0] is qfac; the voxel sizes follow it
        spacing = np.asarray(meta["pixdim"]).ravel()[1 : 1 + array.ndim]
    else:
        spacing = np.asarray(meta.get("spacing", np.ones(array.ndim))).ravel()[: array.ndim]
    return array, tuple(float(s) for s in spacing)


def read_file(path: Path, fmt: str) -> FileInfo:
    """Validate and describe one file; raise :class:`UnreadableFileError` with the reason."""
    if path.stat().st_size == 0:
        raise UnreadableFileError("empty file (0 bytes)")
    header = read_dicom_header(path) if fmt == "dicom" else {}
    array, spacing = read_pixels(path, fmt)
    if array.size == 0:
        raise UnreadableFileError("image has no pixels")
    if not np.isfinite(array).all():
        raise UnreadableFileError("image contains NaN or infinite values")
    if header.get("PixelSpacing"):  # (row, column) mm; MONAI ignores it without orientation tags
        row, col = (float(v) for v in header.pop("PixelSpacing").split("\\")[:2])
        spacing = (col, row, *spacing[2:])  # x first, like the pixel array
    return FileInfo(tuple(int(s) for s in array.shape), spacing, header)
