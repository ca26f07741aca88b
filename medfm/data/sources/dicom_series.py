"""DICOM series: read headers only, group files into series, check and order the slices, decode.

Headers are read with ``defer_size`` so pixel data stays on disk until a series has passed its
checks; only then are its pixels decoded. Slices are ordered by the position of
``ImagePositionPatient`` along the slice normal (from ``ImageOrientationPatient``), falling back to
``InstanceNumber``.

MONAI's ``PydicomReader`` reads a series from a folder; we group and order ourselves because real
exports mix several series in one folder, and because a bad slice must quarantine its series with
a reason rather than fail the read.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medfm.data.sources.readers import DICOM_IDENTIFIERS, SAFE_DICOM_FIELDS, UnreadableFileError


@dataclasses.dataclass
class SliceHeader:
    """The header fields of one DICOM file that ingestion needs (identifiers still raw)."""

    path: Path
    fields: dict[str, str]
    rows: int
    columns: int
    frames: int
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    instance: int
    pixel_spacing: tuple[float, float] | None
    transfer_syntax: str
    has_pixels: bool


def is_dicom_file(path: Path) -> bool:
    """True when the file carries the ``DICM`` preamble marker (DICOM Part 10)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _floats(value) -> tuple[float, ...] | None:
    return tuple(float(v) for v in value) if value else None


def read_slice_header(path: Path) -> SliceHeader:
    """Read one file's header (pixel data deferred); raise :class:`UnreadableFileError`."""
    import pydicom

    if path.stat().st_size == 0:
        raise UnreadableFileError("empty file (0 bytes)")
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except Exception as err:  # pydicom raises many types for broken files
        raise UnreadableFileError(f"not a readable DICOM file ({type(err).__name__})") from None
    spacing = _floats(ds.get("PixelSpacing"))
    return SliceHeader(
        path=path,
        fields={k: str(ds.get(k, "") or "") for k in SAFE_DICOM_FIELDS + DICOM_IDENTIFIERS},
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        orientation=_floats(ds.get("ImageOrientationPatient")),
        position=_floats(ds.get("ImagePositionPatient")),
        instance=int(ds.get("InstanceNumber", 0) or 0),
        pixel_spacing=spacing[:2] if spacing else None,
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        has_pixels="PixelData" in ds or "FloatPixelData" in ds,
    )


def group_series(headers: Iterable[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """Files grouped by SeriesInstanceUID (a file without one is a series of its own)."""
    groups: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        groups[h.fields.get("SeriesInstanceUID") or f"file:{h.path}"].append(h)
    return dict(groups)


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:6]))


def order_slices(series: list[SliceHeader]) -> list[SliceHeader]:
    """Slices sorted along the slice normal, else by InstanceNumber, then by path."""
    first = series[0]
    if first.orientation and all(h.position for h in series):
        normal = _normal(first.orientation)
        return sorted(series, key=lambda h: (float(np.dot(normal, h.position)), str(h.path)))
    return sorted(series, key=lambda h: (h.instance, str(h.path)))


def slice_positions(series: list[SliceHeader]) -> np.ndarray | None:
    """Positions of ordered slices along the normal (mm), or None without geometry."""
    if not series[0].orientation or not all(h.position for h in series):
        return None
    normal = _normal(series[0].orientation)
    return np.array([float(np.dot(normal, h.position)) for h in series])


def check_decoder(transfer_syntax: str) -> None:
    """Raise when pixels in this transfer syntax cannot be decoded here, naming what to install."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    if not transfer_syntax or not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise UnreadableFileError(f"no pixel decoder exists for {uid.name}") from None
    if not decoder.is_available:
        options = "; or ".join(decoder.missing_dependencies)
        raise UnreadableFileError(
            f"compressed transfer syntax {uid.name} has no decoder installed: install {options}"
        )


def check_series(series: list[SliceHeader]) -> None:
    """Raise :class:`UnreadableFileError` for a series that cannot form one consistent volume."""
    if len({(h.rows, h.columns) for h in series}) > 1:
        raise UnreadableFileError("series has slices of different sizes")
    if len({tuple(np.round(h.orientation or (), 3)) for h in series}) > 1:
        raise UnreadableFileError("series has slices with different orientations")
    positions = slice_positions(series)
    if positions is not None and len(positions) > 2:
        steps = np.diff(positions)
        if np.any(steps <= 1e-6):
            raise UnreadableFileError("series has two slices at the same position")
        if steps.max() > 1.5 * np.median(steps):
            raise UnreadableFileError(f"gap in slice positions (step up to {steps.max():.2f} mm)")


def series_spacing(series: list[SliceHeader]) -> tuple[float, ...]:
    """(x, y[, z]) voxel size in mm: PixelSpacing is (row, column) so x comes second."""
    row, col = series[0].pixel_spacing or (1.0, 1.0)
    positions = slice_positions(series)
    if len(series) > 1:
        z = float(np.median(np.diff(positions))) if positions is not None else 1.0
        return (col, row, z)
    return (col, row)


def series_affine(series: list[SliceHeader]) -> np.ndarray | None:
    """RAS voxel-to-world affine ``(4, 4)`` of ordered slices decoded x-first ``(X, Y, Z)``, from
    ImageOrientationPatient, ImagePositionPatient and PixelSpacing (None without geometry).

    DICOM patient space is LPS; MONAI's readers (and so :mod:`monai.transforms` ``Spacing`` and
    ``Orientation``) work in RAS, so the x and y rows are negated, as MONAI's ITK reader does.
    """
    first = series[0]
    if not first.orientation or not first.position:
        return None
    row_dir, col_dir = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:6])
    spacing = series_spacing(series)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[0]  # x (column index) runs along the row direction
    affine[:3, 1] = col_dir * spacing[1]
    affine[:3, 2] = _normal(first.orientation) * (spacing[2] if len(spacing) > 2 else 1.0)
    affine[:3, 3] = np.asarray(first.position)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _monochrome1_inverted(ds, pixels: np.ndarray) -> np.ndarray:
    """MONOCHROME1 (minimum shown white, common for CR/DX radiographs) flipped to the MONOCHROME2
    convention every other image follows, on the stored values: ``2**BitsStored - 1 - v``
    (``max + min - v`` without BitsStored), so all slices of a series flip alike. pydicom leaves
    this to the caller."""
    if str(ds.get("PhotometricInterpretation", "")).strip() != "MONOCHROME1":
        return pixels
    bits = int(ds.get("BitsStored", 0) or 0)
    top = float(2**bits - 1) if bits else float(pixels.max() + pixels.min())
    if bits and int(ds.get("PixelRepresentation", 0) or 0) == 1:  # signed: centred range
        top = -1.0
    return top - pixels


def decode_slice(header: SliceHeader) -> np.ndarray:
    """One file's pixels in units (MONOCHROME1 inverted, RescaleSlope/Intercept applied),
    x-first: ``(X, Y[, F])``.

    Raises :class:`UnreadableFileError` for missing pixel data, a compressed transfer syntax
    without a decoder (naming what to install), or pixels that cannot be decoded.
    """
    import pydicom

    if not header.has_pixels:
        raise UnreadableFileError("DICOM file has no pixel data")
    check_decoder(header.transfer_syntax)
    try:
        ds = pydicom.dcmread(header.path)
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as err:
        raise UnreadableFileError(f"pixel data cannot be decoded ({type(err).__name__})") from None
    pixels = _monochrome1_inverted(ds, pixels)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    pixels = np.swapaxes(pixels * slope + intercept, -1, -2)  # rows are y: make x first
    return np.moveaxis(pixels, 0, -1) if pixels.ndim == 3 else pixels  # frames last


def stack_slices(slices: list[np.ndarray]) -> np.ndarray:
    """``(X, Y)`` for one slice, ``(X, Y, Z)`` for several (or one multi-frame file)."""
    return slices[0] if len(slices) == 1 else np.stack(slices, axis=-1)


def load_series(paths: list[Path]) -> np.ndarray:
    """Decode ordered files into an ``(X, Y)`` image or ``(X, Y, Z)`` volume, in units.

    Pixel rows are y, so each slice is transposed to x-first, matching MONAI's readers.
    """
    return stack_slices([decode_slice(read_slice_header(p)) for p in paths])
