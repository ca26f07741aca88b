"""Ingest folders of medical images into ``manifest.csv``, ``quarantine.csv`` and ``report.json``.

Every file found is either accepted (one manifest row) or rejected (one quarantine row with the
reason), so ``seen == accepted + rejected``. Patient, study and series identifiers are replaced by
HMAC pseudonyms (:mod:`medfm.data.pseudonym`); no DICOM PHI attribute reaches any output.
Source files
are only read, never modified.

Example:
    >>> result = ingest(["runs/demo/data/raw"], "runs/demo/ingest",
    ...                 labels="runs/demo/data/labels.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from medfm.data.manifest import write_csv, write_manifest
from medfm.data.pseudonym import pseudonymize, resolve_salt
from medfm.data.readers import (
    DICOM_IDENTIFIERS,
    SAFE_DICOM_FIELDS,
    FileInfo,
    UnreadableFileError,
    file_format,
    read_file,
)
from medfm.data.splits import assign_splits, check_no_patient_leak

log = logging.getLogger(__name__)


@dataclasses.dataclass
class IngestResult:
    manifest: Path
    quarantine: Path
    report: Path
    rows: list[dict]
    counts: dict


def scan(sources: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """All files under ``sources`` (recursively), as ``(file, source_root)``, sorted, no hidden."""
    found: list[tuple[Path, Path]] = []
    for source in sources:
        root = Path(source)
        if not root.exists():
            raise FileNotFoundError(f"Source {root} does not exist; pass a folder or a file")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        base = root.parent if root.is_file() else root
        found += [
            (f, base)
            for f in files
            if not any(part.startswith(".") for part in f.relative_to(base).parts)
        ]
    return found


def read_labels(path: str | os.PathLike, key: str) -> dict[str, dict[str, str]]:
    """Labels table keyed by ``key``; a ``path`` key is resolved relative to the table's folder."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if key not in (reader.fieldnames or []):
            raise ValueError(
                f"Labels file {path} has no column {key!r}; columns: {reader.fieldnames}"
            )
        rows = list(reader)
    if key == "path":
        return {str((path.parent / r[key]).resolve()): r for r in rows}
    return {r[key]: r for r in rows}


def _center(
    spec: str, info: FileInfo, file: Path, root: Path, label_row: dict | None, salt: bytes
) -> str:
    kind, _, arg = spec.partition(":")
    if kind == "column":
        return (label_row or {}).get(arg, "")
    if kind == "folder":
        parts = file.relative_to(root).parts[:-1]
        return parts[int(arg)] if int(arg) < len(parts) else ""
    if kind == "dicom":
        if arg not in SAFE_DICOM_FIELDS + DICOM_IDENTIFIERS:
            allowed = ", ".join(SAFE_DICOM_FIELDS + DICOM_IDENTIFIERS)
            raise ValueError(f"--center dicom:{arg}: use one of {allowed}")
        value = info.header.get(arg, "")
        # Identifiers (institution, station, patient, UIDs) are only ever kept as pseudonyms.
        return pseudonymize(value, salt, "c") if arg in DICOM_IDENTIFIERS else value
    raise ValueError(f"--center {spec!r}: use dicom:TAG, folder:LEVEL or column:NAME")


def _row(file: Path, root: Path, fmt: str, info: FileInfo, salt: bytes) -> dict:
    header = info.header
    patient_key = header.get("PatientID") or file.parent.name
    return {
        "id": pseudonymize(str(file.resolve()), salt, "img"),
        "path": str(file.resolve()),
        "format": fmt,
        "modality": header.get("Modality", ""),
        "shape": "x".join(map(str, info.shape)),
        "spacing": "x".join(f"{s:g}" for s in info.spacing),
        "patient": pseudonymize(patient_key, salt, "pat"),
        "study": pseudonymize(header.get("StudyInstanceUID", ""), salt, "st"),
        "series": pseudonymize(header.get("SeriesInstanceUID", ""), salt, "se"),
    }


def _accept_or_reject(
    file: Path, root: Path, salt: bytes
) -> tuple[dict | None, str | None, FileInfo | None]:
    fmt = file_format(file)
    if fmt is None:
        return None, f"unsupported file type {file.suffix or '(no suffix)'!r}", None
    try:
        info = read_file(file, fmt)
    except UnreadableFileError as err:
        return None, str(err), None
    except OSError as err:
        return None, f"cannot read file ({type(err).__name__})", None
    return _row(file, root, fmt, info, salt), None, info


def _split(rows: list[dict], fractions: Sequence[float], seed: int) -> None:
    patient_labels = {r["patient"]: r.get("label", "") for r in rows}
    splits = assign_splits(patient_labels, fractions, seed)
    for r in rows:
        r["split"] = splits[r["patient"]]
    check_no_patient_leak(rows)


def ingest(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    label_key: str = "path",
    label_column: str = "label",
    center: str = "column:center",
    salt: str | None = None,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    progress: bool = True,
) -> IngestResult:
    """Scan ``sources``, write ``out_dir/{manifest.csv,quarantine.csv,report.json}``."""
    out_dir = Path(out_dir)
    key = resolve_salt(out_dir, salt)
    table = read_labels(labels, label_key) if labels else {}
    rows, rejected, matched = [], [], set()
    for file, root in tqdm(scan(sources), desc="ingest", unit="file", disable=not progress):
        row, reason, info = _accept_or_reject(file, root, key)
        if row is None:
            log.warning("Quarantined %s: %s", file, reason)
            rejected.append({"path": str(file.resolve()), "reason": reason})
            continue
        lookup = row["path"] if label_key == "path" else row.get(label_key, "")
        label_row = table.get(lookup)
        if label_row is not None:
            matched.add(lookup)
        row["label"] = (label_row or {}).get(label_column, "")
        row["center"] = _center(center, info, file, root, label_row, key)
        rows.append(row)
    if rows:
        _split(rows, fractions, seed)
    counts = _report(rows, rejected, table, matched)
    return IngestResult(
        write_manifest(rows, out_dir / "manifest.csv"),
        write_csv(rejected, out_dir / "quarantine.csv", ("path", "reason")),
        _write_json(counts, out_dir / "report.json"),
        rows,
        counts,
    )


def _report(rows: list[dict], rejected: list[dict], table: dict, matched: set) -> dict:
    return {
        "seen": len(rows) + len(rejected),
        "accepted": len(rows),
        "rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
        "formats": dict(Counter(r["format"] for r in rows)),
        "modalities": dict(Counter(r["modality"] or "unknown" for r in rows)),
        "centers": dict(Counter(r["center"] or "unknown" for r in rows)),
        "splits": dict(Counter(r["split"] for r in rows)),
        "patients": len({r["patient"] for r in rows}),
        "labels_unmatched_rows": len(set(table) - matched),
        "files_without_label": sum(1 for r in rows if r["label"] == ""),
    }


def _write_json(data: dict, path: Path) -> Path:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path
