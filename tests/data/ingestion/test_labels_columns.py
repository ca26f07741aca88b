"""The labels file's extra columns reach the manifest only when asked for by name
(``--label-columns``, descriptors for ``ssl.objective=anatcl``); a requested column with a
PHI-like name, non-numeric values or identifier- or date-like values stops the ingest, naming it
and why; an age is capped at 90; report.json names the numeric columns left out."""

import csv
import json
from pathlib import Path

import pytest

from medfm.cli.main import main
from medfm.data.ingestion.ingest import ingest
from medfm.data.ingestion.labels import LabelColumnError, phi_column
from medfm.data.ingestion.manifest import MANIFEST_COLUMNS, read_manifest
from medfm.data.synthetic import SyntheticSpec, write_dataset

# the reviewer's values: a phone-like hospital number, a date of birth, an age over 89
HOSPITAL_IDS = ["5551234567", "5551234568", "5551234569", "5551234570"]
DOB = "19570312"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels_columns")
    labels = write_dataset(root, SyntheticSpec(n_centers=2, cases_per_center=2, images_per_case=1))
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    extended = [
        r
        | {
            "age": "93" if i == 0 else str(30 + 5 * i),
            "gm_volume": f"{0.61 - 0.01 * i:.3f}",
            "dose": "" if i == 1 else "1e-3",  # a missing value: still numeric, empty there
            "notes": f"case {i}",
            "hospital_id": HOSPITAL_IDS[i],
            "patient_dob": DOB,
            "split": "train",  # a manifest column: never taken from the labels file
        }
        for i, r in enumerate(rows)
    ]
    extended = [r | {"path": str(root / r["path"])} for r in extended]  # CSVs go elsewhere too
    return root, _write(root / "labels_extra.csv", extended), extended


def _write(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _outputs(out_dir):
    return "".join(
        (out_dir / name).read_text() for name in ("manifest.csv", "quarantine.csv", "report.json")
    )


def test_by_default_no_extra_column_is_kept_and_the_numeric_ones_are_named(dataset, tmp_path):
    root, labels, _ = dataset
    result = ingest([root / "raw"], tmp_path, labels=labels, salt="s", progress=False)
    with open(result.manifest, newline="") as f:
        assert next(csv.reader(f)) == list(MANIFEST_COLUMNS)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["labels_columns_kept"] == []
    assert report["labels_columns_notes"] == {}
    assert report["labels_columns_not_kept"] == [
        "age",
        "gm_volume",
        "dose",
        "hospital_id",
        "patient_dob",
    ]
    written = _outputs(tmp_path)
    assert not any(value in written for value in [*HOSPITAL_IDS, DOB])


def test_requested_descriptors_are_kept_exactly_and_an_age_over_89_becomes_90(dataset, tmp_path):
    root, labels, extended = dataset
    result = ingest(
        [root / "raw"],
        tmp_path,
        labels=labels,
        label_columns=["age", "gm_volume", "dose"],
        salt="s",
        progress=False,
    )
    with open(result.manifest, newline="") as f:
        assert next(csv.reader(f)) == [*MANIFEST_COLUMNS, "age", "gm_volume", "dose"]
    by_path = {str(Path(r["path"]).resolve()): r for r in extended}
    manifest = {r["path"]: r for r in read_manifest(result.manifest)}
    assert manifest.keys() == by_path.keys()
    for path, row in manifest.items():
        expected = by_path[path]
        age = "90" if expected["age"] == "93" else expected["age"]
        assert (row["age"], row["gm_volume"], row["dose"]) == (
            age,
            expected["gm_volume"],
            expected["dose"],
        )
    assert sorted(r["age"] for r in manifest.values()) == ["35", "40", "45", "90"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["labels_columns_kept"] == ["age", "gm_volume", "dose"]
    assert "capped at 90" in report["labels_columns_notes"]["age"]
    assert report["labels_columns_not_kept"] == ["hospital_id", "patient_dob"]
    assert not any(value in _outputs(tmp_path) for value in [*HOSPITAL_IDS, DOB])
    # the same request as one comma-separated string (the CLI's form)
    again = ingest(
        [root / "raw"],
        tmp_path / "again",
        labels=labels,
        label_columns="age, gm_volume,dose",
        salt="s",
        progress=False,
    )
    assert again.counts["labels_columns_kept"] == ["age", "gm_volume", "dose"]


@pytest.mark.parametrize(
    "column",
    [
        # the reviewer's examples
        "hospital_id",
        "patient_dob",
        "yob",
        "subject",
        "Patient No",
        "exam_date_yyyymmdd",
        "pat_name",
        # DICOM Basic Profile keywords and usual spellings
        "PatientName",
        "PatientID",
        "PatientAge",
        "PatientWeight",
        "patient_birth_date",
        "date_of_birth",
        "DOB",
        "SubjectID",
        "hospitalID",
        "accession_number",
        "MRN",
        "phone",
        "Home Address",
        "e-mail",
        "ssn",
    ],
)
def test_a_requested_column_named_like_a_phi_attribute_is_refused(dataset, tmp_path, column):
    root, _, extended = dataset
    labels = _write(tmp_path / "labels_phi.csv", [r | {column: "1"} for r in extended])
    with pytest.raises(
        LabelColumnError,
        match=f"column '{column}' is refused: its name looks like a PHI attribute",
    ):
        ingest(
            [root / "raw"],
            tmp_path / "out",
            labels=labels,
            label_columns=["age", column],
            salt="s",
            progress=False,
        )
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("values", "why"),
    [
        (HOSPITAL_IDS, "its values look like identifiers"),
        ([f"{v}.0" for v in HOSPITAL_IDS], "its values look like identifiers"),  # pandas' floats
        ([DOB, DOB, "20010101", "19991231"], "its values look like dates"),
        (["183211", "183211", "20.5", "7"], None),  # repeated or short: measurements
        (["case a", "1", "2", "3"], r"it is not numeric \(1 of 4 values"),
        (["", "", "", ""], "it has no values"),
    ],
)
def test_a_requested_column_is_refused_for_its_values_which_the_error_never_shows(
    dataset, tmp_path, values, why
):
    root, _, extended = dataset
    rows = [r | {"code": v} for r, v in zip(extended, values, strict=True)]
    labels = _write(tmp_path / "labels_values.csv", rows)

    def run():
        return ingest(
            [root / "raw"],
            tmp_path / "out",
            labels=labels,
            label_columns=["code"],
            salt="s",
            progress=False,
        )

    if why is None:
        assert sorted(r["code"] for r in run().rows) == sorted(values)
        return
    with pytest.raises(LabelColumnError, match=f"column 'code' is refused: {why}") as err:
        run()
    assert not any(len(v) > 2 and v in str(err.value) for v in values)


@pytest.mark.parametrize(
    ("columns", "why"),
    [
        (["missing"], "it is not a column of the labels file"),
        (["split"], "a manifest column"),
        (["center"], "the center column"),
        (["label"], "the label"),
    ],
)
def test_a_requested_column_must_be_a_new_column_of_the_labels_file(
    dataset, tmp_path, columns, why
):
    root, labels, _ = dataset
    with pytest.raises(LabelColumnError, match=f"'{columns[0]}' is refused: .*{why}"):
        ingest([root / "raw"], tmp_path, labels=labels, label_columns=columns, salt="s")
    with pytest.raises(LabelColumnError, match="needs a labels file"):
        ingest([root / "raw"], tmp_path, label_columns=["age"], salt="s")


def test_cli_keeps_requested_columns_and_reports_a_refused_one(dataset, tmp_path, capsys):
    root, labels, _ = dataset
    base = ["ingest", str(root / "raw"), "--labels", str(labels), "--salt", "s", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a"), "--label-columns", "age,gm_volume"]) == 0
    rows = read_manifest(tmp_path / "a" / "manifest.csv")
    assert sorted(r["age"] for r in rows) == ["35", "40", "45", "90"]
    assert "hospital_id" not in rows[0]
    assert main([*base, "--out", str(tmp_path / "b"), "--label-columns", "age,hospital_id"]) == 2
    error = capsys.readouterr().err
    assert "column 'hospital_id' is refused: its name looks like a PHI attribute" in error
    assert not any(value in error for value in HOSPITAL_IDS)


def test_phi_names_are_matched_without_case_or_separators_and_descriptors_pass():
    assert all(
        phi_column(c)
        for c in (
            "patientname",
            "PATIENT_NAME",
            "Patient-ID",
            "StudyDate",
            "birthdate",
            "dob",
            "subj_id",
            "SeriesInstanceUID",
            "zip5",
        )
    )
    assert not any(
        phi_column(c)
        for c in (
            "age",
            "baseline_age",
            "gm_volume",
            "wm_volume",
            "label",
            "center",
            "path",
            "sex_code",
            "bmi",
            "width",
            "lipid_fraction",
            "dobutamine_dose",
        )
    )
