"""``medfm curate``: remove near-duplicate slices and tiles before pre-training (Wolf et al.
2024, "Less is More"), from a manifest to a reduced manifest that ``medfm pretrain`` takes.

Two passes over the manifest, so no volume is held longer than it is read: the first computes
each unit's signature (:mod:`medfm.curation.methods`) and reduces them, volume by volume
(``scope="volume"``, the paper) or across the dataset (``scope="dataset"``, through an index);
the second writes the kept slices of volumes (:mod:`medfm.curation.outputs`) and copies the kept
rows of 2D images. 2D images form groups by their ``series`` column at volume scope (a row
without one is a group of its own, so tiles and 2D sets want ``scope="dataset"``).

Written to ``out_dir``: ``manifest.csv`` (the input's columns), ``curation.json`` (seen and kept
per volume, per center and in all, with the method and threshold), ``quarantine.csv`` (rows that
could not be read, by id), ``kept_fraction.png``, ``pairs.png`` (dropped units beside the kept
unit each repeats) and ``private/source_map.csv`` for rows still read from their sources.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from medfm.curation import methods
from medfm.curation.outputs import plot_kept_fraction, plot_pairs, write_slice
from medfm.curation.units import Units, grey, iter_units
from medfm.data.ingestion.manifest import MANIFEST_COLUMNS, read_manifest, write_csv
from medfm.data.ingestion.source_map import shareable_path, write_source_map
from medfm.data.sources.medmnist import medmnist_rows
from medfm.io import write_json
from medfm.tracking.base import Logger, NullLogger

N_PAIRS = 6


@dataclasses.dataclass
class _Scan:
    """What the first pass learns: for every unit its row and slice (-1 for a 2D image), the kept
    units, unreadable rows, notes, and example (kept, dropped) pairs."""

    unit_row: list[int] = dataclasses.field(default_factory=list)
    unit_slice: list[int] = dataclasses.field(default_factory=list)
    kept: set[int] = dataclasses.field(default_factory=set)
    volume_rows: set[int] = dataclasses.field(default_factory=set)
    unreadable: dict[int, str] = dataclasses.field(default_factory=dict)
    notes: Counter = dataclasses.field(default_factory=Counter)
    pairs: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    def add(self, row: int, count: int, volume: bool) -> list[int]:
        start = len(self.unit_row)
        self.unit_row += [row] * count
        self.unit_slice += list(range(count)) if volume else [-1] * count
        if volume:
            self.volume_rows.add(row)
        return list(range(start, start + count))


def load_rows(data: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Rows and column names of a manifest (file or folder) or of a MedMNIST ``.npz``."""
    path = Path(data)
    if path.suffix == ".npz":
        rows = [r | {"id": str(i), "patient": str(i)} for i, r in enumerate(medmnist_rows(path))]
        return rows, list(MANIFEST_COLUMNS)
    manifest = path / "manifest.csv" if path.is_dir() else path
    rows = read_manifest(manifest)
    with open(manifest, newline="") as f:
        columns = next(csv.reader(f))
    return rows, columns


def group_key(row: dict, index: int, units: Units, scope: str) -> tuple:
    if scope == "dataset":
        return ("all",)
    if units.volume or not row.get("series"):
        return ("row", index)
    return ("series", row["series"])


def _reduce(method: str, ids: list[int], sig, threshold: float, scan: _Scan) -> None:
    """Reduce one group of units (``ids``, signatures ``sig``); keep an example pair or two."""
    local = methods.reduce_group(method, sig, threshold) if len(ids) else np.zeros(0, int)
    scan.kept.update(ids[i] for i in local)
    dropped = sorted(set(range(len(ids))) - {int(i) for i in local})
    if dropped and len(scan.pairs) < N_PAIRS:
        match = methods.nearest_kept(method, sig, np.asarray(local), dropped[0])
        scan.pairs.append((ids[match], ids[dropped[0]]))


def concat_parts(parts: list):
    if not parts:
        return []
    if isinstance(parts[0], list):
        return [u for part in parts for u in part]
    return np.concatenate(parts)


def scan_units(rows, data_cfg, method, threshold, scope, embedder, progress) -> _Scan:
    """The first pass: signatures, then the reduction per group or over the dataset."""
    scan = _Scan()
    groups: dict[tuple, tuple[list[int], list]] = defaultdict(lambda: ([], []))
    units_of = iter_units(rows, data_cfg)
    for i, units in enumerate(tqdm(units_of, total=len(rows), desc="curate", disable=not progress)):
        if isinstance(units, Exception):
            scan.unreadable[i] = f"cannot be read ({type(units).__name__})"
            continue
        ids = scan.add(i, len(units.images), units.volume)
        sig = methods.signatures(method, units.images, embedder)
        if units.volume and len(ids) == 1:
            scan.notes["volumes with one slice (kept)"] += 1
        key = group_key(rows[i], i, units, scope)
        if key[0] == "row":  # a volume (or a lone image): reduce now, hold nothing
            _reduce(method, ids, sig, threshold, scan)
            continue
        groups[key][0].extend(ids)
        groups[key][1].append(sig)
    for ids, parts in groups.values():
        if scope == "dataset":
            local = methods.reduce_dataset(method, concat_parts(parts), threshold)
            _dataset_pairs(method, ids, concat_parts(parts), local, scan)
            scan.kept.update(ids[i] for i in local)
        else:
            _reduce(method, ids, concat_parts(parts), threshold, scan)
    return scan


def _dataset_pairs(method, ids, sig, local, scan: _Scan) -> None:
    dropped = sorted(set(range(len(ids))) - {int(i) for i in local})
    picks = dropped[:: max(len(dropped) // N_PAIRS, 1)][:N_PAIRS]
    for unit in picks:
        scan.pairs.append(
            (ids[methods.nearest_kept(method, sig, np.asarray(local), unit)], ids[unit])
        )


def _unit_name(rows: list[dict], scan: _Scan, unit: int) -> str:
    row = rows[scan.unit_row[unit]]
    index = scan.unit_slice[unit]
    return str(row["id"]) if index < 0 else f"{row['id']}-z{index:04d}"


def write_units(rows, scan: _Scan, data_cfg, out_dir: Path, progress: bool):
    """The second pass: rows of the kept units (slices written out) and the example images."""
    from medfm.curation.units import row_units, unit_transforms

    transform, by_row = unit_transforms(data_cfg), defaultdict(list)
    for unit, row in enumerate(scan.unit_row):
        by_row[row].append(unit)
    shown = {u for pair in scan.pairs for u in pair}
    kept_rows, images = [], {}
    for i in tqdm(sorted(by_row), desc="write", disable=not progress):
        kept = [u for u in by_row[i] if u in scan.kept]
        volume = i in scan.volume_rows
        if (volume and kept) or shown.intersection(by_row[i]):
            units = row_units(rows[i], transform)
            images |= {
                u: grey(units.images[max(scan.unit_slice[u], 0)]) for u in shown & set(by_row[i])
            }
        if volume:
            kept_rows += [
                write_slice(units.images[scan.unit_slice[u]], rows[i], scan.unit_slice[u], out_dir)
                for u in kept
            ]
        elif kept:
            kept_rows.append(dict(rows[i]))
    return kept_rows, images


def _shareable(kept_rows: list[dict], out_dir: Path) -> tuple[list[dict], dict]:
    """Rows as the manifest holds them; source links for rows read from their sources."""
    links, shared = {}, []
    for row in kept_rows:
        if row.get("format") in ("nifti", "npy") and row["path"].startswith("slices/"):
            shared.append(row)
            continue
        path = shareable_path(row["id"], row["path"], out_dir)
        if path.startswith("source:"):
            links[row["id"]] = row["path"]
        shared.append(row | {"path": path})
    return shared, links


def _tally(rows, scan: _Scan) -> tuple[dict, dict]:
    per_volume, per_center = defaultdict(Counter), defaultdict(Counter)
    for unit, i in enumerate(scan.unit_row):
        kept = int(unit in scan.kept)
        if i in scan.volume_rows:
            per_volume[str(rows[i]["id"])].update(seen=1, kept=kept)
        per_center[rows[i].get("center") or "unknown"].update(seen=1, kept=kept)
    plain = lambda table: {k: {"seen": v["seen"], "kept": v["kept"]} for k, v in table.items()}  # noqa: E731
    return plain(per_volume), plain(per_center)


def build_report(rows, scan: _Scan, method, threshold, scope, written: int) -> dict:
    """``curation.json``: what was seen and kept, in all, per volume and per center."""
    seen, kept = len(scan.unit_row), len(scan.kept)
    per_volume, per_center = _tally(rows, scan)
    return {
        "method": method,
        "scope": scope,
        "threshold": threshold,
        "seen": seen,
        "kept": kept,
        "kept_fraction": kept / seen if seen else 0.0,
        "rows": {"seen": len(rows), "unreadable": len(scan.unreadable), "written": written},
        "per_volume": per_volume,
        "per_center": per_center,
        "notes": dict(scan.notes),
    }


def curate(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    data_cfg: DictConfig,
    method: str = "dhash",
    threshold: float | None = None,
    scope: str = "volume",
    embedder: methods.Embedder | None = None,
    progress: bool = True,
    logger: Logger | None = None,
) -> dict:
    """Curate the manifest (or MedMNIST ``.npz``) ``data`` into ``out_dir``; returns the report.

    Example: ``curate("ingest/manifest.csv", "curated", load_config(None, []).data)``
    """
    threshold = methods.check_method(method, threshold, scope)
    rows, columns = load_rows(data)
    if not rows:
        raise ValueError(f"{data} has no rows: nothing to curate")
    out_dir, logger = Path(out_dir), logger or NullLogger()
    scan = scan_units(rows, data_cfg, method, threshold, scope, embedder, progress)
    kept_rows, images = write_units(rows, scan, data_cfg, out_dir, progress)
    shared, links = _shareable(kept_rows, out_dir)
    write_source_map(out_dir, links)
    report = build_report(rows, scan, method, threshold, scope, len(shared))
    quarantine = [{"id": rows[i]["id"], "reason": r} for i, r in scan.unreadable.items()]
    pairs = [
        (_unit_name(rows, scan, k), images[k], _unit_name(rows, scan, d), images[d])
        for k, d in scan.pairs
    ]
    files = [
        write_csv(shared, out_dir / "manifest.csv", columns),
        write_csv(quarantine, out_dir / "quarantine.csv", ["id", "reason"]),
        write_json(report, out_dir / "curation.json"),
        plot_kept_fraction(report, out_dir / "kept_fraction.png"),
        plot_pairs(pairs, out_dir / "pairs.png"),
    ]
    _log(logger, report, files, Path(data).name)
    return report


def _log(logger: Logger, report: dict, files: list[Path], data_name: str) -> None:
    """After the files are written: a tracking failure cannot cost them."""
    logger.log_params(
        {"method": report["method"], "scope": report["scope"], "threshold": report["threshold"]}
        | {"data": data_name}
    )
    logger.log_metrics({f"curation/{k}": report[k] for k in ("seen", "kept", "kept_fraction")})
    for path in files:
        logger.log_artifact(path, "curation")
