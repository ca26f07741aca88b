"""The labels table: a CSV joined to images on a key (file path, patient or series pseudonym).

Rows with an empty or repeated key cannot be joined safely; they are set aside with a reason (and
end up in the quarantine) instead of silently picking one of them.

Besides the label (and the center), no column of the labels file reaches the manifest unless it
is asked for by name (``medfm ingest --label-columns age,gm_volume``, e.g. descriptors for
``ssl.objective=anatcl``). :func:`select_columns` refuses a requested column, naming it and why,
when its name looks like a PHI attribute (:func:`phi_column`), when it is not numeric, or when its
values look like identifiers or dates (:func:`identifier_like`); an age column is capped at 90
(:func:`kept_value`, HIPAA Safe Harbor).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import math
import os
import re
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

from medfm.config import ConfigError
from medfm.data.ingestion.basic_profile import BASIC_PROFILE

JOIN_KEYS = ("path", "patient", "series", "study", "id")
AGE_CAP = 90  # HIPAA Safe Harbor: ages over 89 are aggregated into a single "90 or older"


class LabelColumnError(ConfigError):
    """A column asked for by ``--label-columns`` cannot be copied into the manifest (a
    :class:`~medfm.config.ConfigError`, so ``medfm ingest`` reports it without a traceback)."""


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _words(name: str) -> list[str]:
    """``name`` split into lower-case words at separators, camelCase and digits
    (``hospitalID`` -> ``hospital, id``; ``exam_date2`` -> ``exam, date, 2``)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", name)
    name = re.sub(r"([A-Za-z])([0-9])|([0-9])([A-Za-z])", r"\1\3 \2\4", name)
    return [w for w in re.split(r"[^0-9a-z]+", name.lower()) if w]


# whole (normalised) column names that identify a person, besides the DICOM keywords
_PHI_NAMES = frozenset(
    """name names firstname lastname surname givenname familyname fullname middlename
    maidenname patientname birth birthdate dateofbirth dob birthday birthplace placeofbirth
    mrn medicalrecordnumber recordnumber ssn socialsecuritynumber nhsnumber insurancenumber
    address streetaddress street city zip zipcode postcode postalcode email emailaddress phone
    phonenumber telephone telephonenumber mobile fax patientid""".split()
)
# parts of a (normalised) column name that identify a person wherever they appear
_PHI_PARTS = (
    "birth",
    "phone",
    "address",
    "email",
    "mrn",
    "ssn",
    "date",
    "yyyy",
    "name",
    "subject",
    "patient",
    "accession",
)
# words of a column name (:func:`_words`) that identify a person: short ones that, as parts,
# would match harmless names (``id`` in ``width`` or ``lipid``, ``dob`` in ``dobutamine``)
_PHI_WORDS = frozenset("id ids uid uuid guid pid dob yob zip initials".split())
PHI_COLUMN_NAMES = frozenset(_normalise(k) for k in BASIC_PROFILE) | _PHI_NAMES


def phi_column(name: str) -> bool:
    """Whether a column called ``name`` would carry a PHI attribute, ignoring case, spaces,
    ``_`` and ``-``: a DICOM Basic Profile keyword (PS3.15 Table E.1-1,
    :data:`~medfm.data.ingestion.basic_profile.BASIC_PROFILE`, e.g. ``PatientAge``,
    ``StudyDate``) or a usual spelling of a name, birth date, record number or contact detail;
    any name containing ``patient``, ``subject``, ``name``, ``date``, ``birth``, ``accession``,
    ``phone``, ``address``, ``email``, ``mrn`` or ``ssn``; or one with the word ``id`` (``uid``,
    ``dob``, ``yob``, ``zip``, ...): ``hospital_id``, ``pat_name``, ``Patient No``,
    ``exam_date_yyyymmdd``, ``yob``, but not ``age``, ``gm_volume`` or ``width``."""
    key = _normalise(name)
    return (
        key in PHI_COLUMN_NAMES
        or any(part in key for part in _PHI_PARTS)
        or any(word in _PHI_WORDS for word in _words(name))
    )


def age_column(name: str) -> bool:
    """Whether ``name`` holds an age (the word ``age``: ``age``, ``baseline_age``,
    ``age_years``), capped at :data:`AGE_CAP` in the manifest."""
    return "age" in _words(name)


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _integer_digits(value: str) -> str | None:
    """The digits of a non-negative integer written as ``123`` or ``123.0``, else ``None``."""
    match = re.fullmatch(r"\+?(\d+)(?:\.0*)?", value)
    return match.group(1) if match else None


def _is_date(digits: str) -> bool:
    try:
        return len(digits) == 8 and 1850 <= datetime.datetime.strptime(digits, "%Y%m%d").year
    except ValueError:
        return False


def identifier_like(values: Sequence[str]) -> str | None:
    """Why the non-empty ``values`` of a numeric column look like identifiers or dates rather
    than measurements, or ``None``: every one a distinct integer of 6 or more digits (a record,
    phone or hospital number), or every one an 8-digit integer that reads as a YYYYMMDD date."""
    digits = [_integer_digits(v) for v in values]
    if not values or any(d is None for d in digits):
        return None
    if all(_is_date(d) for d in digits):
        return "its values look like dates (8-digit integers that read as YYYYMMDD)"
    if len(set(digits)) == len(digits) and all(len(d) >= 6 for d in digits):
        return (
            "its values look like identifiers (every value a distinct integer of 6 or more "
            "digits); if it is a measurement, store it in other units or with decimals"
        )
    return None


def numeric_columns(table: LabelsTable, exclude: Collection[str] = ()) -> list[str]:
    """The labels columns (other than ``exclude`` and the join key) with at least one value and
    every non-empty value a finite number: the ones ``--label-columns`` could ask for."""
    found = []
    for column in table.columns:
        if column == table.key or column in exclude:
            continue
        values = _values(table, column)
        if values and all(_is_number(v) for v in values):
            found.append(column)
    return found


def _values(table: LabelsTable, column: str) -> list[str]:
    values = (str(r.get(column) or "").strip() for r in table.rows.values())
    return [v for v in values if v]


def select_columns(
    table: LabelsTable, requested: Sequence[str], exclude: Collection[str] = ()
) -> dict[str, str]:
    """Check the ``requested`` labels columns to copy into the manifest and return a note for
    each of them that is transformed (``{column: note}``, for report.json).

    Raises :class:`LabelColumnError` naming the column and why when it is not in the file, is in
    ``exclude`` (manifest columns, the join key, the label and center columns), has a PHI-like
    name (:func:`phi_column`), is empty or not numeric, or has identifier- or date-like values
    (:func:`identifier_like`). No value of the column is ever put in the message."""
    notes = {}
    for column in requested:
        why = None
        if column not in table.columns:
            why = f"it is not a column of the labels file (its columns: {list(table.columns)})"
        elif column == table.key or column in exclude:
            why = "it is the join key, the label or the center column, or a manifest column"
        elif phi_column(column):
            why = (
                "its name looks like a PHI attribute (a name, date, identifier, contact or "
                "patient detail); only de-identified descriptors such as age or a regional "
                "volume may be kept"
            )
        else:
            values = _values(table, column)
            if not values:
                why = "it has no values"
            elif not all(_is_number(v) for v in values):
                bad = sum(not _is_number(v) for v in values)
                why = f"it is not numeric ({bad} of {len(values)} values are not numbers)"
            else:
                why = identifier_like(values)
        if why:
            raise LabelColumnError(f"--label-columns: column {column!r} is refused: {why}")
        if age_column(column):
            notes[column] = (
                f"capped at {AGE_CAP}: ages over {AGE_CAP - 1} are recorded as {AGE_CAP} "
                "(HIPAA Safe Harbor)"
            )
    return notes


def kept_value(column: str, value: str) -> str:
    """A requested column's value as the manifest holds it: stripped, and an age of
    :data:`AGE_CAP` or more recorded as :data:`AGE_CAP`."""
    value = value.strip()
    if value and age_column(column) and float(value) >= AGE_CAP:
        return str(AGE_CAP)
    return value


@dataclasses.dataclass
class LabelsTable:
    """Usable rows by key, and rows set aside as ``{"path": "<csv>:<line>", "reason": ...}``."""

    rows: dict[str, dict[str, str]]
    rejected: list[dict[str, str]]
    key: str
    columns: tuple[str, ...] = ()


def read_labels(path: str | os.PathLike, key: str = "path") -> LabelsTable:
    """Read and validate a labels CSV; a ``path`` key is resolved relative to the CSV's folder.
    Its other columns are only read; :func:`select_columns` checks those asked for."""
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
        columns = tuple(reader.fieldnames or ())
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
    return LabelsTable(rows, rejected, key, columns)
