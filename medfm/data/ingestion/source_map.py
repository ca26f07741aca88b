"""The private source map: the only link from a pseudonymous id to a source file.

Hospital exports often name folders and files after the patient (``DOE^JOHN_0012345/CT/IM0001``),
so no shareable output may hold a component of a source path. ``medfm ingest`` therefore writes
``OUT/private/source_map.csv`` (``id,path``; the folder mode 0700, the file mode 0600) and keeps
every source path out of ``manifest.csv``, ``quarantine.csv``, ``report.json`` and its log lines:

- a manifest row names its source as ``source:<id>`` in its ``path`` column; files that ingest
  itself wrote under ``OUT`` (slide tiles, already named by pseudonyms) are relative paths;
- a quarantine row names the rejected file by a stable pseudonymous id and its suffix.

:func:`medfm.data.ingestion.manifest.read_manifest` turns ``source:<id>`` back into a path
through the map beside the manifest, so training and evaluation read the images while nothing
they write or log holds the path. The map is the site's re-identification key: it stays at the
site, is never logged, and is never uploaded to MLflow.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from medfm.io import atomic_path

SOURCE_MAP = Path("private") / "source_map.csv"
PREFIX = "source:"
KNOWN_SUFFIXES = frozenset(
    ".dcm .dicom .ima .img .hdr .nii .gz .mha .mhd .nrrd .png .jpg .jpeg .bmp .tif .tiff .svs "
    ".ndpi .npz .npy .zip .txt .csv .json .xml .pdf .raw".split()
)


def shareable_suffix(path: str | os.PathLike) -> str:
    """The file's trailing known suffixes (``.nii.gz``), lower-case; ``""`` when unknown, since a
    dotted name such as ``John.Doe`` would otherwise leak part of itself as a "suffix"."""
    kept = []
    for suffix in reversed(Path(path).suffixes):
        if suffix.lower() not in KNOWN_SUFFIXES:
            break
        kept.insert(0, suffix.lower())
    return "".join(kept)


def write_source_map(out_dir: str | os.PathLike, links: Mapping[str, str]) -> Path:
    """Write ``{id: source path}`` to ``out_dir/private/source_map.csv``, readable by the owner
    only (folder 0700, file 0600)."""
    path = Path(out_dir) / SOURCE_MAP
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "path"])
            writer.writerows(sorted(links.items()))
    return path


def read_source_map(manifest_dir: str | os.PathLike) -> dict[str, str]:
    """``{id: source path}`` from the private map beside a manifest; a clear error without one."""
    path = Path(manifest_dir) / SOURCE_MAP
    if not path.is_file():
        raise FileNotFoundError(
            f"The manifest in {manifest_dir} names its images through {SOURCE_MAP}, which is not "
            "there. Keep the manifest in the folder `medfm ingest` wrote, with its private/ "
            "folder, or ingest the data again."
        )
    with open(path, newline="") as f:
        return {row["id"]: row["path"] for row in csv.DictReader(f)}


def shareable_path(row_id: str, path: str, out_dir: Path) -> str:
    """What a manifest row's ``path`` column holds: a path relative to ``out_dir`` for files
    ingest wrote there, else ``source:<id>``."""
    try:
        return str(Path(path).resolve().relative_to(out_dir.resolve()))
    except ValueError:
        return f"{PREFIX}{row_id}"


def resolve_paths(rows: Iterable[dict], manifest_dir: Path) -> None:
    """Replace every ``source:<id>`` path of ``rows`` by its source path, in place."""
    links: dict[str, str] | None = None
    for row in rows:
        value = row.get("path", "")
        if value.startswith(PREFIX):
            links = read_source_map(manifest_dir) if links is None else links
            key = value[len(PREFIX) :]
            if key not in links:
                raise KeyError(
                    f"{key} is not in {manifest_dir / SOURCE_MAP}; the manifest and its private "
                    "map come from different ingests: ingest the data again"
                )
            row["path"] = links[key]
