"""Tests for medfm.data.ingestion.splits: patient-level stratified splits and the leak check."""

from __future__ import annotations

from collections import Counter

import pytest

from medfm.data.ingestion.splits import PatientLeakError, assign_splits, check_no_patient_leak


def patients(n_per_label: int, labels=("0", "1", "2", "3")) -> dict[str, str]:
    return {f"p-{label}{i:03d}": label for label in labels for i in range(n_per_label)}


def test_every_patient_assigned_once_to_a_known_split():
    labels = patients(7)
    splits = assign_splits(labels, seed=0)
    assert splits.keys() == labels.keys()
    assert set(splits.values()) == {"train", "val", "test"}


def test_same_seed_same_assignment_other_seed_differs():
    labels = patients(10)
    assert assign_splits(labels, seed=5) == assign_splits(dict(reversed(labels.items())), seed=5)
    assert assign_splits(labels, seed=5) != assign_splits(labels, seed=6)


def test_fractions_give_exact_counts_per_label():
    labels = patients(10)
    splits = assign_splits(labels, (0.6, 0.2, 0.2), seed=1)
    for label in ("0", "1", "2", "3"):
        counts = Counter(splits[p] for p, lab in labels.items() if lab == label)
        assert counts == {"train": 6, "val": 2, "test": 2}


@pytest.mark.parametrize("n_per_label", [5, 6, 9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratification_keeps_every_label_in_every_split(n_per_label, seed):
    labels = patients(n_per_label)
    splits = assign_splits(labels, seed=seed)
    for name in ("train", "val", "test"):
        present = {labels[p] for p, s in splits.items() if s == name}
        assert present == {"0", "1", "2", "3"}


def test_custom_names_and_fractions():
    labels = patients(10, labels=("a",))
    splits = assign_splits(labels, (0.5, 0.5), seed=0, names=("fit", "holdout"))
    assert Counter(splits.values()) == {"fit": 5, "holdout": 5}


@pytest.mark.parametrize(
    "fractions", [(0.6, 0.2), (0.5, 0.2, 0.2), (0.6, 0.3, 0.2), (0.25, 0.25, 0.25, 0.25)]
)
def test_bad_fractions_raise(fractions):
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(patients(5), fractions)


def test_negative_fractions_raise():
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(patients(5), (1.2, -0.1, -0.1))


def test_leak_check_passes_clean_rows_and_ignores_blank_fields():
    rows = [
        {"patient": "p-1", "split": "train"},
        {"patient": "p-1", "split": "train"},
        {"patient": "p-2", "split": "test"},
        {"patient": "", "split": "val"},
        {"patient": "p-2", "split": ""},
    ]
    assert check_no_patient_leak(rows) is None


def test_leak_check_names_the_patient():
    rows = [
        {"patient": "p-aaaa", "split": "train"},
        {"patient": "p-0123456789abcdef", "split": "train"},
        {"patient": "p-0123456789abcdef", "split": "test"},
    ]
    with pytest.raises(PatientLeakError, match="p-0123456789abcdef") as info:
        check_no_patient_leak(rows)
    assert "'train'" in str(info.value) and "'test'" in str(info.value)
    assert "p-aaaa" not in str(info.value)
    assert isinstance(info.value, ValueError)
