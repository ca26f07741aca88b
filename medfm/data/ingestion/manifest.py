"""The manifest: one CSV row per image or series, identifiers pseudonymised, written atomically."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from medfm.data.ingestion.source_map import resolve_paths
from medfm.io import atomic_path

MANIFEST_COLUMNS = (
    "id",
    "path",
    "format",
    "modality",
    "shape",
    "spacing",
    "orientation",
    "patient",
    "study",
    "series",
    "center",
    "label",
    "split",
    "institution",
    "manufacturer",
    "scanner_model",
    "kvp",
    "slice_thickness",
)


def write_csv(
    rows: Iterable[Mapping[str, object]], path: str | os.PathLike, columns: Sequence[str]
) -> Path:
    """Write rows with exactly ``columns`` to ``path`` via a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return Path(path)


def write_manifest(
    rows: Iterable[Mapping[str, object]], path: str | os.PathLike, extra: Sequence[str] = ()
) -> Path:
    """Write manifest rows with :data:`MANIFEST_COLUMNS` then the ``extra`` columns (numeric
    columns of the labels file), atomically."""
    return write_csv(rows, path, [*MANIFEST_COLUMNS, *extra])


def read_manifest(path: str | os.PathLike, required: Sequence[str] = ("path",)) -> list[dict]:
    """Read a manifest; raise if the file or a required column is missing, naming both.

    ``source:<id>`` paths are resolved through the private map beside the manifest
    (:mod:`medfm.data.ingestion.source_map`); relative paths against the manifest's folder.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"Manifest {path} not found; create one with `medfm ingest`")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"Manifest {path} lacks column(s) {missing}; it has {reader.fieldnames}"
            )
        rows = list(reader)
    base = path.parent
    resolve_paths(rows, base)
    for row in rows:
        if row.get("path") and not os.path.isabs(row["path"]):
            row["path"] = str((base / row["path"]).resolve())
    return rows
