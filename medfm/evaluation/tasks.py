"""The labelled task of an evaluation: labels, splits, patients and centers as arrays, the folds
each protocol trains and tests on, and the mean ± std of per-seed (or per-fold) results.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medfm.data.ingestion.manifest import read_manifest
from medfm.data.sources.medmnist import is_medmnist, medmnist_rows
from medfm.evaluation.protocols import Protocol, loco_folds, train_subset


def load_eval_rows(data: str | os.PathLike) -> list[dict]:
    """Rows of a manifest (``manifest.csv`` or its folder) or of a MedMNIST ``.npz``; every
    MedMNIST image is its own patient, with no center."""
    path = Path(data)
    if path.suffix == ".npz":
        if not path.is_file() or not is_medmnist(path):
            raise FileNotFoundError(
                f"{path} is not a MedMNIST .npz (train_images, train_labels...)"
            )
        rows = medmnist_rows(path)
        for i, row in enumerate(rows):
            row.update(id=str(i), patient=str(i), center="")
        return rows
    return read_manifest(path)


@dataclasses.dataclass
class Fold:
    """Indices into the task's rows: what a head trains, validates and is tested on."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    held_out: str = ""  # the left-out center of a loco fold
    base_classes: np.ndarray | None = None  # incremental: the base classes (others are novel)


@dataclasses.dataclass
class EvalTask:
    """Per-row arrays of a manifest; ``labels`` is ``(n,)`` strings, or ``(n, L)`` 0/1 for a
    multi-label task (``;``-joined labels, as MedMNIST's ChestMNIST)."""

    labels: np.ndarray
    split: np.ndarray
    patient: np.ndarray
    center: np.ndarray
    labelled: np.ndarray  # (n,) bool

    @classmethod
    def from_rows(cls, rows: Sequence[dict]) -> EvalTask:
        """The task of manifest ``rows``: labels, splits, patients and centers as arrays."""
        col = lambda k: np.array([str(r.get(k, "") or "") for r in rows])  # noqa: E731
        raw = col("label")
        labelled = raw != ""
        multi = labelled.any() and all(";" in v for v in raw[labelled])
        if multi:
            width = len(raw[labelled][0].split(";"))
            zeros = ";".join(["0"] * width)
            labels = np.array([[int(b) for b in (v or zeros).split(";")] for v in raw])
        else:
            labels = raw
        task = cls(labels, col("split"), col("patient"), col("center"), labelled)
        task._check()
        return task

    @property
    def multilabel(self) -> bool:
        """True when the labels are multi-label (ChestMNIST-like)."""
        return self.labels.ndim == 2

    @property
    def classes(self) -> np.ndarray:
        """The sorted class names."""
        return np.unique(self.labels[self.labelled]) if not self.multilabel else np.array([0, 1])

    def _check(self) -> None:
        for split in ("train", "test"):
            if not (self.labelled & (self.split == split)).any():
                raise ValueError(
                    f"no labelled rows in the {split!r} split; the data needs a split column "
                    "with labelled train and test rows (see `medfm ingest --split`)"
                )
        if not self.multilabel and len(np.unique(self.labels[self._rows("test")])) < 2:
            raise ValueError(
                "the test split has a single class; AUC is undefined. Use a split with at least "
                "two classes in test"
            )

    def _rows(self, split: str, mask: np.ndarray | None = None) -> np.ndarray:
        keep = self.labelled & (self.split == split)
        return np.flatnonzero(keep if mask is None else keep & mask)

    def folds(self, protocol: Protocol, seed: int) -> list[Fold]:
        """One fold (full, fewshot, fraction, incremental), or one per held-out center
        (loco). An incremental fold keeps every training row of its base classes and K
        patients per novel class, and names its base classes."""
        if protocol.kind == "loco":
            return [
                Fold(
                    self._rows("train", ~mine),
                    self._rows("val", ~mine),
                    np.flatnonzero(self.labelled & mine),
                    center,
                )
                for center, mine in loco_folds(self.center)
            ]
        train = self._rows("train")
        if self.multilabel and protocol.kind in ("fewshot", "incremental"):
            raise ValueError(f"{protocol.kind} protocols need single-label classes; use fraction:F")
        labels = self.labels[train] if not self.multilabel else self.labels[train][:, 0]
        patients = self.patient[train] if (self.patient[train] != "").all() else None
        base = protocol.base_classes(self.classes) if protocol.kind == "incremental" else None
        keep = train_subset(labels, protocol, seed, patients, base)
        return [Fold(train[keep], self._rows("val"), self._rows("test"), base_classes=base)]

    def groups(self, idx: np.ndarray) -> np.ndarray | None:
        """Patients of ``idx`` when every row has one and some repeat (bootstrap units)."""
        p = self.patient[idx]
        return p if (p != "").all() and len(np.unique(p)) < len(p) else None

    def centers(self, idx: np.ndarray) -> np.ndarray | None:
        """The center of each sample (empty strings when unknown)."""
        c = self.center[idx]
        return c if (c != "").all() and len(np.unique(c)) > 1 else None


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample std of the finite values (NaN when none; std 0 for one)."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else 0.0


def aggregate(results: Sequence[dict]) -> dict:
    """Mean of every scalar over repetitions, ``<key>_std`` (sample std, 0 for one; NaN
    repetitions, such as a single-class loco center, are left out), the mean
    of the CI bounds, ``n_seeds``; ``per_center`` and ``per_label`` from the first, unless each
    repetition is a loco fold (then ``per_center`` joins them)."""
    first, out = results[0], {"n_seeds": len(results)}
    for key, value in first.items():
        if key in ("n_seeds", "n_folds") or key.endswith("_std"):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = np.array([r.get(key, np.nan) for r in results], dtype=float)
            out[key], out[f"{key}_std"] = _mean_std(values)
        elif key == "test_auc_ci95":  # the mean of the repetitions' interval bounds
            out[key] = [_mean_std(np.array([r[key][i] for r in results]))[0] for i in (0, 1)]
        else:
            out[key] = value
    return out
