"""The one atomic writer: every file medfm writes appears whole or not at all.

A file is written to a temporary name beside its destination, flushed to disk, then renamed
into place (``os.replace`` is atomic on POSIX and Windows within one filesystem). A kill or an
exception leaves the previous file, or none, never half of one; the temporary file is removed on
error. Config, manifests, labels, checkpoints, encoders, metrics, reports and the robustness card
all go through :func:`atomic_path`.

Example:
    >>> from medfm.io import write_json
    >>> write_json({"auc": 0.9}, "runs/eval/metrics.json")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes, so writers that choose a format by
    suffix still work); on success fsync it and rename it onto ``path``, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix="".join(path.suffixes)
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON with sorted keys, atomically; numpy scalars become floats."""
    return write_text(json.dumps(data, indent=2, sort_keys=True, default=float), path)
