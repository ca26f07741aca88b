"""Read one NIfTI or 2D image file through MONAI ``LoadImage``; file types and DICOM field lists.

DICOM files are read by :mod:`medfm.data.sources.dicom_series`; of their headers only the fields in
:data:`SAFE_DICOM_FIELDS`, and the identifiers in :data:`DICOM_IDENTIFIERS` (pseudonymised straight
away), are ever used.
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
    ".ima": "dicom",
    ".npz": "medmnist",
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
    "nifti": "NibabelReader",
    "png": "PILReader",
    "jpeg": "PILReader",
    "tiff": "PILReader",
}
SAFE_DICOM_FIELDS = ("Modality", "Manufacturer", "ManufacturerModelName", "SliceThickness", "KVP")
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
    """What ingestion keeps from a non-DICOM file: its geometry."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    orientation: str


def orientation_code(affine: np.ndarray, ndim: int) -> str:
    """Axis codes (``"RAS"``, ``"LPS"``, ...) of a RAS-world affine, for the first ``ndim`` axes."""
    from nibabel.orientations import aff2axcodes

    return "".join(aff2axcodes(np.asarray(affine, dtype=float)))[:ndim]


@functools.cache
def _loader(fmt: str) -> LoadImage:
    return LoadImage(reader=MONAI_READERS[fmt], image_only=False)


def read_pixels(path: Path, fmt: str) -> tuple[np.ndarray, dict]:
    """Load with MONAI's reader for ``fmt``; return the array (spatial dims first) and metadata."""
    try:
        image, meta = _loader(fmt)(str(path))
    except Exception as err:
        raise UnreadableFileError(f"{fmt} reader failed ({type(err).__name__})") from None
    return np.asarray(image), meta


def read_file(path: Path, fmt: str) -> FileInfo:
    """Validate and describe one NIfTI or 2D image file; raise :class:`UnreadableFileError`."""
    if path.stat().st_size == 0:
        raise UnreadableFileError("empty file (0 bytes)")
    array, meta = read_pixels(path, fmt)
    if array.size == 0:
        raise UnreadableFileError("image has no pixels")
    if not np.isfinite(array).all():
        raise UnreadableFileError("image contains NaN or infinite values")
    if fmt != "nifti":
        return FileInfo(tuple(int(s) for s in array.shape), (1.0,) * min(array.ndim, 2), "")
    spatial = min(array.ndim, 3)
    spacing = np.asarray(meta["pixdim"]).ravel()[1 : 1 + spatial]  # pixdim[0] is qfac
    return FileInfo(
        tuple(int(s) for s in array.shape),
        tuple(float(v) for v in spacing),
        orientation_code(meta["original_affine"], spatial),
    )
