"""Ingest folders of medical images into ``manifest.csv``, ``quarantine.csv`` and ``report.json``,
with the link from pseudonymous ids to source files only in ``private/source_map.csv``
(:mod:`medfm.data.ingestion.source_map`).

Every file found is either accepted (it contributes to a manifest row) or rejected (one quarantine
row with the reason), so ``seen == accepted + rejected``. DICOM files are grouped into series
(one row per series); NIfTI and 2D images give one row per file; a MedMNIST ``.npz`` gives one row
per image with its official split. Patient, study and series identifiers are replaced by HMAC
pseudonyms (:mod:`medfm.data.ingestion.pseudonym`); no DICOM PHI attribute reaches any output.
Source files
are only read, never modified.

Example:
    >>> result = ingest(["runs/demo/data/raw"], "runs/demo/ingest",
    ...                 labels="runs/demo/data/labels.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from medfm.data.ingestion.labels import (
    LabelColumnError,
    LabelsTable,
    kept_value,
    numeric_columns,
    read_labels,
    select_columns,
)
from medfm.data.ingestion.manifest import MANIFEST_COLUMNS, write_csv, write_manifest
from medfm.data.ingestion.pseudonym import pseudonymize, resolve_salt
from medfm.data.ingestion.rows import (
    TileOptions,
    dicom_rows,
    file_row,
    medmnist_file_rows,
    wsi_rows,
)
from medfm.data.ingestion.source_map import shareable_path, shareable_suffix, write_source_map
from medfm.data.ingestion.splits import assign_splits, check_no_patient_leak
from medfm.data.slides.reading import WSI_SUFFIXES
from medfm.data.sources.dicom_series import is_dicom_file
from medfm.data.sources.readers import file_format
from medfm.io import write_json

log = logging.getLogger(__name__)
QUARANTINE_COLUMNS = ("id", "suffix", "reason")


@dataclasses.dataclass
class IngestResult:
    """What :func:`ingest` wrote, and its rows with their source paths resolved (in memory only:
    the manifest on disk names sources as ``source:<id>``)."""

    manifest: Path
    quarantine: Path
    report: Path
    rows: list[dict]
    counts: dict


def scan(sources: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """All files under ``sources`` (recursively), as ``(file, source_root)``, sorted; hidden
    files and folders are skipped."""
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


def _kind(file: Path) -> str | None:
    fmt = file_format(file)
    if fmt is None and not file.suffix and is_dicom_file(file):
        return "dicom"  # DICOM exports often have no suffix
    if file.suffix.lower() in WSI_SUFFIXES:
        return "wsi"
    if fmt == "tiff" and _tiff_is_slide(file):
        return "wsi"
    return fmt


def _tiff_is_slide(file: Path) -> bool:
    from medfm.data.slides.reading import is_wsi

    try:
        return is_wsi(file)
    except ImportError:
        return False  # without the [wsi] extra a TIFF is read as a plain image


def _sort_files(files: list[tuple[Path, Path]]) -> tuple[dict, list, list]:
    """Split into DICOM (by root), other readable files, and unsupported rejections."""
    dicom, other, rejected = defaultdict(list), [], []
    for file, root in files:
        kind = _kind(file)
        if kind == "dicom":
            dicom[root].append(file)
        elif kind is None:
            reason = (
                "not a DICOM file (no DICM marker) and no known image suffix"
                if not file.suffix
                else f"unsupported file type {file.suffix!r}"
            )
            rejected.append({"path": str(file.resolve()), "reason": reason})
        else:
            other.append((file, root, kind))
    return dicom, other, rejected


def _other_rows(
    other, salt, center, tiles: tuple[Path, TileOptions], progress
) -> tuple[list[dict], list[dict], int]:
    rows, rejected, accepted = [], [], 0
    for file, root, fmt in tqdm(other, desc="images", unit="file", disable=not progress):
        if fmt == "medmnist":
            made, reason = medmnist_file_rows(file, salt)
        elif fmt == "wsi":
            made, reason = wsi_rows(file, root, salt, center, *tiles)
        else:
            made, reason = file_row(file, root, fmt, salt, center)
        if reason:
            rejected.append({"path": str(file.resolve()), "reason": reason})
        else:
            rows += made
            accepted += 1
    return rows, rejected, accepted


def _label_columns(
    table: LabelsTable | None, requested: Sequence[str], label_column: str, center: str
) -> dict:
    """Check the ``requested`` labels columns (:func:`~medfm.data.ingestion.labels.select_columns`)
    and describe them for report.json: those kept, the notes on them (an age's cap), and the
    numeric columns available but not kept, by name only."""
    if requested and table is None:
        raise LabelColumnError("--label-columns needs a labels file (--labels)")
    if table is None:
        return {
            "labels_columns_kept": [],
            "labels_columns_notes": {},
            "labels_columns_not_kept": [],
        }
    used = {label_column} | ({center.partition(":")[2]} if center.startswith("column:") else set())
    notes = select_columns(table, requested, used | set(MANIFEST_COLUMNS))
    available = numeric_columns(table, used | set(MANIFEST_COLUMNS))
    return {
        "labels_columns_kept": list(requested),
        "labels_columns_notes": notes,
        "labels_columns_not_kept": [c for c in available if c not in requested],
    }


def _join_labels(
    rows, table: LabelsTable | None, label_column: str, center: str, extra: Sequence[str] = ()
) -> set:
    matched = set()
    for row in rows:
        key = row["path"] if table is None or table.key == "path" else row.get(table.key, "")
        label_row = table.rows.get(key) if table else None
        for column in extra:
            row[column] = kept_value(column, str((label_row or {}).get(column) or ""))
        if label_row is not None:
            matched.add(key)
            if label_column not in label_row:
                raise ValueError(f"Labels file has no column {label_column!r}")
            row["label"] = label_row[label_column]
        if center.startswith("column:"):
            row["center"] = (label_row or {}).get(center.partition(":")[2], "")
    return matched


def _split(rows: list[dict], fractions, seed: int, test_centers: Sequence[str]) -> None:
    """Patient-level stratified split; rows from ``test_centers`` all go to test."""
    todo = [r for r in rows if not r.get("split")]  # MedMNIST rows keep their official split
    held_out = [r for r in todo if r.get("center") in set(test_centers)]
    for r in held_out:
        r["split"] = "test"
    rest = [r for r in todo if r.get("center") not in set(test_centers)]
    if test_centers:  # the held-out centers are the test set; split the rest into train / val
        train, val = fractions[0], fractions[1]
        fractions = (train / (train + val), val / (train + val), 0.0)
    splits = assign_splits({r["patient"]: r.get("label", "") for r in rest}, fractions, seed)
    for r in rest:
        r["split"] = splits[r["patient"]]
    check_no_patient_leak(rows)


def ingest(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    label_key: str = "path",
    label_column: str = "label",
    label_columns: Sequence[str] | str = (),
    center: str = "column:center",
    salt: str | None = None,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    test_centers: Sequence[str] = (),
    tiles: TileOptions | None = None,
    progress: bool = True,
) -> IngestResult:
    """Scan ``sources`` and write ``out_dir/{manifest.csv,quarantine.csv,report.json}``.

    ``center`` is ``column:NAME`` (labels file), ``folder:LEVEL`` (0 = first folder under the
    source) or ``dicom:TAG``. ``test_centers`` puts whole centers in the test split. Whole-slide
    images are tiled into ``out_dir/tiles/<slide pseudonym>/`` as set by ``tiles``.

    No other column of the labels file reaches the manifest unless named in ``label_columns``
    (a list or ``"age,gm_volume"``): those become manifest columns of the same name, after
    :data:`~medfm.data.ingestion.manifest.MANIFEST_COLUMNS`, an age capped at 90. A requested
    column with a PHI-like name, non-numeric values or identifier- or date-like values stops the
    ingest with a :class:`~medfm.data.ingestion.labels.LabelColumnError` naming it and why
    (:func:`~medfm.data.ingestion.labels.select_columns`). ``report.json`` lists the kept
    columns, notes on them and the numeric columns that were not asked for (by name only).
    """
    out_dir, tiles = Path(out_dir), tiles or TileOptions()
    if isinstance(label_columns, str):
        label_columns = label_columns.split(",")
    extra = list(dict.fromkeys(c.strip() for c in label_columns if c.strip()))
    table = read_labels(labels, label_key) if labels else None
    columns_report = _label_columns(table, extra, label_column, center)  # before any write
    key = resolve_salt(out_dir, salt)
    files = scan(sources)
    dicom, other, rejected = _sort_files(files)
    rows, bad, accepted = dicom_rows(dicom, key, center, progress)
    rejected += bad
    more, bad, n_other = _other_rows(other, key, center, (out_dir / "tiles", tiles), progress)
    rows, rejected, accepted = rows + more, rejected + bad, accepted + n_other
    rows = [{c: row.get(c, "") for c in MANIFEST_COLUMNS} for row in rows]
    matched = _join_labels(rows, table, label_column, center, extra)
    if rows:
        _split(rows, fractions, seed, test_centers)
    links: dict[str, str] = {}
    quarantined = [_quarantine_row(r, key, links) for r in rejected]
    quarantined += [_label_reject_row(r) for r in (table.rejected if table else [])]
    for r in quarantined:
        log.warning("Quarantined %s (%s): %s", r["id"], r["suffix"], r["reason"])
    reasons = [q["reason"] for q in quarantined[: len(rejected)]]  # with ids, not file names
    counts = _report(len(files), accepted, rows, reasons, table, matched)
    counts |= columns_report
    shared = _shareable_rows(rows, out_dir, links)
    write_source_map(out_dir, links)
    return IngestResult(
        write_manifest(shared, out_dir / "manifest.csv", extra),
        write_csv(quarantined, out_dir / "quarantine.csv", QUARANTINE_COLUMNS),
        write_json(counts, out_dir / "report.json"),
        rows,
        counts,
    )


def _shareable_rows(rows: list[dict], out_dir: Path, links: dict[str, str]) -> list[dict]:
    """Rows as the manifest holds them: source paths replaced by ``source:<id>`` (linked in
    ``links``), files under ``out_dir`` relative to it."""
    shared = []
    for row in rows:
        path = shareable_path(row["id"], row["path"], out_dir)
        if path.startswith("source:"):
            if links.get(row["id"], row["path"]) != row["path"]:
                raise ValueError(f"two sources share the id {row['id']}; ingest them apart")
            links[row["id"]] = row["path"]
        shared.append(row | {"path": path})
    return shared


def _quarantine_row(rejected: dict, key: bytes, links: dict[str, str]) -> dict:
    """``{"id", "suffix", "reason"}``: the file by a stable pseudonym (linked in ``links``) and a
    reason in which its path, or any tail of it down to the file name, reads as that id."""
    path = rejected["path"]
    file_id = pseudonymize(path, key, "file")
    links[file_id] = path
    reason, parts = str(rejected["reason"]), Path(path).parts
    for tail in [os.path.join(*parts[i:]) for i in range(len(parts))]:  # longest first
        reason = reason.replace(tail, file_id)
    return {"id": file_id, "suffix": shareable_suffix(path), "reason": reason}


def _label_reject_row(rejected: dict) -> dict:
    """A labels-file row set aside: named by its line number, not the file's path."""
    line = str(rejected["path"]).rsplit(":", 1)[-1]
    return {"id": f"labels:{line}", "suffix": ".csv", "reason": rejected["reason"]}


def _report(seen, accepted, rows, reasons, table, matched) -> dict:
    return {
        "seen": seen,
        "accepted": accepted,
        "rejected": len(reasons),
        "rejected_by_reason": dict(Counter(reasons)),
        "rows": len(rows),
        "formats": dict(Counter(r["format"] for r in rows)),
        "modalities": dict(Counter(r["modality"] or "unknown" for r in rows)),
        "centers": dict(Counter(r["center"] or "unknown" for r in rows)),
        "splits": dict(Counter(r["split"] for r in rows)),
        "patients": len({r["patient"] for r in rows}),
        "labels_rejected_rows": len(table.rejected) if table else 0,
        "labels_unmatched_rows": len(set(table.rows) - matched) if table else 0,
        "rows_without_label": sum(1 for r in rows if r.get("label", "") == ""),
    }
