"""The labels table: a CSV joined to images on a key (file path, patient or series pseudonym).

Rows with an empty or repeated key cannot be joined safely; they are set aside with a reason (and
end up in the quarantine) instead of silently picking one of them.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter
from pathlib import Path

JOIN_KEYS = ("path", "patient", "series", "study", "id")


@dataclasses.dataclass
class LabelsTable:
    """Usable rows by key, and rows set aside as ``{"path": "<csv>:<line>", "reason": ...}``."""

    rows: dict[str, dict[str, str]]
    rejected: list[dict[str, str]]
    key: str


def read_labels(path: str | os.PathLike, key: str = "path") -> LabelsTable:
    """Read and validate a labels CSV; a ``path`` key is resolved relative to the CSV's folder."""
    path = Path(path)
    if key not in JOIN_KEYS:
        raise ValueError(f"--label-key {key!r}: join on one of {', '.join(JOIN_KEYS)}")
    if not path.is_file():
        raise FileNotFoundError(f"Labels file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if key not in (reader.fieldnames or []):
            raise ValueError(
                f"Labels file {path} has no column {key!r}; it has {reader.fieldnames}"
            )
        numbered = list(enumerate(reader, start=2))  # line 1 is the header

    def resolve(value: str) -> str:
        return str((path.parent / value).resolve()) if key == "path" and value else value

    counts = Counter(resolve(r[key].strip()) for _, r in numbered)
    rows, rejected = {}, []
    for line, row in numbered:
        value = resolve(row[key].strip())
        if not value:
            rejected.append(
                {"path": f"{path}:{line}", "reason": f"labels row has an empty {key!r}"}
            )
        elif counts[value] > 1:
            rejected.append(
                {
                    "path": f"{path}:{line}",
                    "reason": f"labels key {key!r} appears {counts[value]} times",
                }
            )
        else:
            rows[value] = row
    return LabelsTable(rows, rejected, key)
