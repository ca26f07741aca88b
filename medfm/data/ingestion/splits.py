"""Patient-level train/val/test splits, stratified by label, and a leak check."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np


class PatientLeakError(ValueError):
    """A patient appears in more than one split."""


def assign_splits(
    patient_labels: Mapping[str, object],
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict[str, str]:
    """Assign every patient to one split, per label stratum, deterministically from ``seed``.

    Within each label, patients are shuffled and cut by ``fractions``; every split gets at least one
    patient of a label when that label has enough patients.
    """
    if len(fractions) != len(names) or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions {list(fractions)} must sum to 1, one per split {list(names)}")
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, label in sorted(patient_labels.items()):
        strata[str(label)].append(patient)
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for label in sorted(strata):
        patients = list(rng.permutation(strata[label]))
        bounds = np.round(np.cumsum(fractions) * len(patients)).astype(int)
        start = 0
        for name, stop in zip(names, bounds, strict=True):
            for p in patients[start:stop]:
                out[str(p)] = name
            start = stop
    return out


def check_no_patient_leak(rows: Sequence[Mapping[str, str]]) -> None:
    """Raise :class:`PatientLeakError` naming the first patient pseudonym found in two splits."""
    seen: dict[str, str] = {}
    for row in rows:
        patient, split = row.get("patient", ""), row.get("split", "")
        if not patient or not split:
            continue
        if seen.setdefault(patient, split) != split:
            raise PatientLeakError(
                f"Patient {patient} is in both {seen[patient]!r} and {split!r} splits; "
                "re-run the split so that each patient is in one split only"
            )
