"""Manifest rows from files: DICOM series, NIfTI / 2D image files, MedMNIST ``.npz`` files.

Each builder returns rows whose identifiers are already pseudonyms; raw header values never leave.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medfm.data.ingestion.pseudonym import pseudonymize
from medfm.data.sources.dicom_series import (
    SliceHeader,
    check_series,
    decode_slice,
    group_series,
    order_slices,
    read_slice_header,
    series_spacing,
)
from medfm.data.sources.loading import SERIES_SEPARATOR
from medfm.data.sources.medmnist import medmnist_rows
from medfm.data.sources.readers import (
    DICOM_IDENTIFIERS,
    SAFE_DICOM_FIELDS,
    UnreadableFileError,
    orientation_code,
    read_file,
)


def center_from(spec: str, fields: dict[str, str], file: Path, root: Path, salt: bytes) -> str:
    """The center for ``folder:LEVEL`` and ``dicom:TAG`` specs (``column:`` is set at the join)."""
    kind, _, arg = spec.partition(":")
    if kind == "column":
        return ""
    if kind == "folder":
        parts = file.relative_to(root).parts[:-1]
        return parts[int(arg)] if int(arg) < len(parts) else ""
    if kind == "dicom":
        if arg not in SAFE_DICOM_FIELDS + DICOM_IDENTIFIERS:
            allowed = ", ".join(SAFE_DICOM_FIELDS + DICOM_IDENTIFIERS)
            raise ValueError(f"--center dicom:{arg}: use one of {allowed}")
        value = fields.get(arg, "")
        # Identifiers (institution, station, patient, UIDs) are only ever kept as pseudonyms.
        return pseudonymize(value, salt, "c") if arg in DICOM_IDENTIFIERS else value
    raise ValueError(f"--center {spec!r}: use dicom:TAG, folder:LEVEL or column:NAME")


def file_row(file: Path, root: Path, fmt: str, salt: bytes, center: str) -> tuple[list[dict], str]:
    """One row for a NIfTI / PNG / JPEG / TIFF file, or a rejection reason."""
    try:
        info = read_file(file, fmt)
    except UnreadableFileError as err:
        return [], str(err)
    except OSError as err:
        return [], f"cannot read file ({type(err).__name__})"
    path = str(file.resolve())
    return [
        {
            "id": pseudonymize(path, salt, "img"),
            "path": path,
            "format": fmt,
            "modality": "",
            "shape": "x".join(map(str, info.shape)),
            "spacing": "x".join(f"{s:g}" for s in info.spacing),
            "orientation": info.orientation,
            "patient": pseudonymize(
                file.parent.name, salt, "pat"
            ),  # folder = patient for non-DICOM
            "center": center_from(center, {}, file, root, salt),
        }
    ], ""


def medmnist_file_rows(file: Path, salt: bytes) -> tuple[list[dict], str]:
    """One row per image of a MedMNIST file; each image is its own patient (no IDs are given)."""
    try:
        rows = medmnist_rows(file)
    except UnreadableFileError as err:
        return [], str(err)
    for row in rows:
        row["id"] = row["patient"] = pseudonymize(row["path"], salt, "img")
    return rows, ""


def _dicom_orientation(header: SliceHeader, ndim: int) -> str:
    if not header.orientation:
        return ""
    row_dir, col_dir = np.asarray(header.orientation[:3]), np.asarray(header.orientation[3:6])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_dir, col_dir, np.cross(row_dir, col_dir)
    return orientation_code(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, ndim)  # LPS -> RAS world


def _series_path(ordered: list[SliceHeader], folder_counts: Counter) -> str:
    """The series folder when it holds exactly this series, else the ordered files joined."""
    folder = ordered[0].path.parent
    if (
        len(ordered) > 1
        and all(h.path.parent == folder for h in ordered)
        and folder_counts[folder] == len(ordered)
    ):
        return str(folder.resolve())
    return SERIES_SEPARATOR.join(str(h.path.resolve()) for h in ordered)


def _series_row(ordered, shape, salt, center, root, folder_counts) -> dict:
    fields = ordered[0].fields
    spacing = series_spacing(ordered)[: len(shape)]
    return {
        "id": pseudonymize(fields.get("SeriesInstanceUID") or str(ordered[0].path), salt, "img"),
        "path": _series_path(ordered, folder_counts),
        "format": "dicom",
        "modality": fields.get("Modality", ""),
        "shape": "x".join(map(str, shape)),
        "spacing": "x".join(f"{s:g}" for s in spacing),
        "orientation": _dicom_orientation(ordered[0], len(shape)),
        "patient": pseudonymize(
            fields.get("PatientID") or ordered[0].path.parent.name, salt, "pat"
        ),
        "study": pseudonymize(fields.get("StudyInstanceUID", ""), salt, "st"),
        "series": pseudonymize(fields.get("SeriesInstanceUID", ""), salt, "se"),
        "center": center_from(center, fields, ordered[0].path, root, salt),
        **acquisition_columns(fields, salt),
    }


def slice_thickness_bin(thickness: str) -> str:
    """Slice thickness in bins radiologists use: ``<=1mm``, ``1-3mm``, ``3-5mm``, ``>5mm``."""
    try:
        mm = float(thickness)
    except ValueError:
        return ""
    for limit, name in ((1.0, "<=1mm"), (3.0, "1-3mm"), (5.0, "3-5mm")):
        if mm <= limit:
            return name
    return ">5mm"


def _number(value: str) -> str:
    try:
        return f"{float(value):g}"
    except ValueError:
        return value


def acquisition_columns(fields: dict[str, str], salt: bytes) -> dict[str, str]:
    """DICOM-derived confounders an auditor may use as the center (``--center-column``).

    The institution appears only as a pseudonym; manufacturer, scanner model, kVp and slice
    thickness are device settings, not PHI.
    """
    return {
        "institution": pseudonymize(fields.get("InstitutionName", ""), salt, "c"),
        "manufacturer": fields.get("Manufacturer", ""),
        "scanner_model": fields.get("ManufacturerModelName", ""),
        "kvp": _number(fields.get("KVP", "")),
        "slice_thickness": slice_thickness_bin(fields.get("SliceThickness", "")),
    }


def _decode_all(series: list[SliceHeader]) -> tuple[list, list[dict]]:
    """Decode each slice; a slice that fails is rejected alone with its reason."""
    good, rejected = [], []
    for h in series:
        try:
            pixels = decode_slice(h)
            if pixels.size == 0:
                raise UnreadableFileError("image has no pixels")
            if not np.isfinite(pixels).all():
                raise UnreadableFileError("image contains NaN or infinite values")
            good.append((h, pixels.shape))  # keep only the shape: a volume is never held
        except UnreadableFileError as err:
            rejected.append({"path": str(h.path.resolve()), "reason": str(err)})
    return good, rejected


def _reject(headers: list[SliceHeader], reason: str) -> list[dict]:
    return [{"path": str(h.path.resolve()), "reason": reason} for h in headers]


def _accept_series(
    series: list[SliceHeader],
) -> tuple[list[SliceHeader], tuple[int, ...], list[dict]]:
    """Check a series on its headers first; only then decode each slice once to validate it.

    Slices without pixel data or that fail to decode are rejected alone; the rest must still
    form one consistent volume (same size and orientation, no gap), else all are rejected.
    Returns the ordered slices, the volume shape ``(X, Y[, Z])`` and the rejections.
    """
    rejected = _reject([h for h in series if not h.has_pixels], "DICOM file has no pixel data")
    ordered = (
        order_slices([h for h in series if h.has_pixels]) if len(rejected) < len(series) else []
    )
    try:
        if ordered:
            check_series(ordered)  # headers only: nothing decoded yet
    except UnreadableFileError as err:
        return [], (), rejected + _reject(ordered, str(err))
    good, bad = _decode_all(ordered)
    rejected += bad
    ordered = [h for h, _ in good]
    try:
        if bad and ordered:
            check_series(ordered)  # a dropped slice may leave a gap
    except UnreadableFileError as err:
        return [], (), rejected + _reject(ordered, str(err))
    if not ordered:
        return [], (), rejected
    first = good[0][1]
    shape = tuple(first) if len(ordered) == 1 else (*first, len(ordered))
    return ordered, shape, rejected


def _headers(files: list[Path], progress: bool) -> tuple[list[SliceHeader], list[dict]]:
    headers, rejected = [], []
    for file in tqdm(files, desc="DICOM headers", unit="file", disable=not progress):
        try:
            headers.append(read_slice_header(file))
        except (UnreadableFileError, OSError) as err:
            rejected.append({"path": str(file.resolve()), "reason": str(err)})
    return headers, rejected


def dicom_rows(
    by_root: dict[Path, list[Path]], salt: bytes, center: str, progress: bool
) -> tuple[list[dict], list[dict], int]:
    """Rows for every consistent DICOM series; every file of a bad series is rejected."""
    rows, rejected, accepted = [], [], 0
    for root, files in by_root.items():
        headers, bad = _headers(files, progress)
        rejected += bad
        folder_counts = Counter(h.path.parent for h in headers)
        for series in tqdm(
            group_series(headers).values(), desc="DICOM series", unit="series", disable=not progress
        ):
            ordered, shape, bad = _accept_series(series)
            rejected += bad
            if not ordered:
                continue
            rows.append(_series_row(ordered, shape, salt, center, root, folder_counts))
            accepted += len(ordered)
    return rows, rejected, accepted


__all__ = ["dicom_rows", "file_row", "medmnist_file_rows", "center_from"]


@dataclasses.dataclass(frozen=True)
class TileOptions:
    """How whole-slide images are tiled (see :func:`medfm.data.slides.tiling.tile_slide`)."""

    tile_size: int = 224
    magnification: float | None = None
    tissue_threshold: float = 0.5
    max_tiles: int | None = None


def wsi_rows(
    file: Path, root: Path, salt: bytes, center: str, tiles_dir: Path, options: TileOptions
) -> tuple[list[dict], str]:
    """One row per kept tissue tile of a slide; tiles are PNGs named by the slide's pseudonym."""
    try:
        from medfm.data.slides.tiling import tile_slide

        slide = pseudonymize(str(file.resolve()), salt, "slide")
        tiles = tile_slide(
            file,
            tiles_dir / slide,
            stem=slide,
            tile_size=options.tile_size,
            magnification=options.magnification,
            tissue_threshold=options.tissue_threshold,
            max_tiles=options.max_tiles,
        )
    except ImportError as err:
        return [], str(err)
    except (UnreadableFileError, ValueError) as err:
        return [], str(err).replace(str(file), file.name)
    if not tiles:
        return [], "whole-slide image has no tile with enough tissue"
    patient = pseudonymize(file.parent.name, salt, "pat")
    where = center_from(center, {}, file, root, salt)
    return [
        {
            "id": pseudonymize(tile["path"], salt, "img"),
            "path": str(Path(tile["path"]).resolve()),
            "format": "wsi_tile",
            "modality": "SM",  # DICOM's code for slide microscopy
            "shape": f"{options.tile_size}x{options.tile_size}x3",
            "patient": patient,
            "series": slide,
            "center": where,
        }
        for tile in tiles
    ], ""
