"""Tests for medfm.data.ingestion.deidentify (``medfm deidentify``) on real pydicom test files."""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import re

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from medfm.cli import deidentify_cmd
from medfm.data.ingestion.deidentify import (
    MAX_OFFSET_HOURS,
    MIN_OFFSET_HOURS,
    date_offset_hours,
    deidentify,
)
from medfm.data.ingestion.pseudonym import SALT_FILE, pseudonymize

SALT = "test-salt"
PATIENT_DIR = "DOE^JOHN_0012345"
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
# Values put into the sources: each must be gone from every output.
PHI = {
    "ReferringPhysicianName": "WELBY^MARCUS",
    "AccessionNumber": "ACC0012345",
    "PatientBirthDate": "19450704",
    "PatientAddress": "12 ELM STREET",
}
CT_DAYS_APART = 8  # the second CT file's ContentDate is this much later than the first's


def _write(ds: Dataset, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)


@pytest.fixture
def sources(tmp_path):
    """``src/DOE^JOHN_0012345/``: two CT_small instances of one study and series (the second
    references the first and carries a private tag in a sequence item), MR_small (another
    patient), MR_small with BurnedInAnnotation=YES, a text file and a corrupt DICOM file."""
    folder = tmp_path / "src" / PATIENT_DIR
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in PHI.items():
        setattr(ct, keyword, value)
    _write(ct, folder / "DOE^JOHN_ct1.dcm")
    first_uid = ct.SOPInstanceUID
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ct.InstanceNumber = 2
    content = datetime.datetime.strptime(ct.ContentDate, "%Y%m%d")
    ct.ContentDate = (content + datetime.timedelta(days=CT_DAYS_APART)).strftime("%Y%m%d")
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ct.SOPClassUID, first_uid
    item.private_block(0x0099, "MEDFM TEST", create=True).add_new(0x01, "LO", "DOE^JOHN")
    ct.ReferencedImageSequence = [item]
    _write(ct, folder / "DOE^JOHN_ct2.dcm")

    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    _write(mr, folder / "DOE^JOHN_mr.dcm")
    mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    mr.BurnedInAnnotation = "YES"
    _write(mr, folder / "DOE^JOHN_burned.dcm")

    (folder / "DOE^JOHN_notes.txt").write_text("patient DOE^JOHN, MRN 0012345\n")
    deflated = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    broken = folder / "DOE^JOHN_broken.dcm"
    _write(deflated, broken)
    broken.write_bytes(broken.read_bytes()[:-2000] + b"\xff" * 64)  # corrupt deflate stream
    return tmp_path / "src"


def _by_instance(result) -> dict[tuple[str, int], Dataset]:
    """The written files by (Modality, InstanceNumber)."""
    datasets = [pydicom.dcmread(p) for p in result.written]
    return {(ds.Modality, int(ds.InstanceNumber)): ds for ds in datasets}


def _quarantine(result) -> list[dict]:
    with open(result.quarantine, newline="") as f:
        return list(csv.DictReader(f))


def test_basic_profile_attributes_replaced_or_removed(sources, tmp_path):
    src = sources / PATIENT_DIR
    originals = {n: pydicom.dcmread(src / f"DOE^JOHN_{n}.dcm") for n in ("ct1", "ct2", "mr")}
    result = deidentify([sources], tmp_path / "out", salt=SALT, progress=False)
    out = _by_instance(result)
    assert sorted(out) == [("CT", 1), ("CT", 2), ("MR", 1)]
    pairs = [(originals["ct1"], out["CT", 1]), (originals["ct2"], out["CT", 2])]
    pairs.append((originals["mr"], out["MR", 1]))
    for before, after in pairs:
        for keyword in ("PatientName", "PatientID", "InstitutionName", "StationName"):
            assert str(after.get(keyword, "")) != str(before.get(keyword)), keyword
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            new = after.get(keyword)
            assert new != before.get(keyword) and UID.fullmatch(new) and len(new) <= 64
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert after.SOPClassUID == before.SOPClassUID  # class UIDs are not identifying
        assert after.PatientBirthDate == "" and after.PatientSex == ""
        for keyword in ("PatientAge", "PatientWeight", "StudyDescription", "ImageComments"):
            assert keyword not in after
        assert [e.tag for e in after.iterall() if e.tag.is_private] == []
        assert after.PatientIdentityRemoved == "YES"
        assert after.LongitudinalTemporalInformationModified == "MODIFIED"
        codes = [
            (c.CodingSchemeDesignator, c.CodeValue)
            for c in after.DeidentificationMethodCodeSequence
        ]
        assert codes == [("DCM", "113100"), ("DCM", "113107")]
    for _, after in pairs[:2]:
        assert after.AccessionNumber not in ("", PHI["AccessionNumber"])
        assert str(after.ReferringPhysicianName) not in ("", PHI["ReferringPhysicianName"])
        assert "PatientAddress" not in after  # X in Table E.1-1, though dicognito replaces it
    ct1, ct2, mr = out["CT", 1], out["CT", 2], out["MR", 1]
    assert ct1.StudyInstanceUID == ct2.StudyInstanceUID
    assert ct1.SeriesInstanceUID == ct2.SeriesInstanceUID
    assert ct1.FrameOfReferenceUID == ct2.FrameOfReferenceUID
    assert ct1.SOPInstanceUID != ct2.SOPInstanceUID
    assert ct1.PatientID == ct2.PatientID and ct1.PatientName == ct2.PatientName
    assert ct2.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ct1.SOPInstanceUID
    assert ct1.StudyInstanceUID != mr.StudyInstanceUID
    for path in result.written:  # not one original identifying value left anywhere in the bytes
        raw = path.read_bytes()
        for value in [*PHI.values(), "CompressedSamples", "1CT1", "4MR1", "JFK IMAGING", "DOE^"]:
            assert value.encode() not in raw, (path, value)


def test_dates_shift_per_patient_and_keep_their_differences(sources, tmp_path):
    src = sources / PATIENT_DIR
    ct1_in = pydicom.dcmread(src / "DOE^JOHN_ct1.dcm")
    mr_in = pydicom.dcmread(src / "DOE^JOHN_mr.dcm")
    out = _by_instance(deidentify([sources], tmp_path / "out", salt=SALT, progress=False))

    def day(value: str) -> datetime.date:
        return datetime.datetime.strptime(value, "%Y%m%d").date()

    ct_shift = day(out["CT", 1].StudyDate) - day(ct1_in.StudyDate)
    mr_shift = day(out["MR", 1].StudyDate) - day(mr_in.StudyDate)
    for shift in (ct_shift, mr_shift):
        assert -MAX_OFFSET_HOURS // 24 <= shift.days <= -MIN_OFFSET_HOURS // 24
    assert ct_shift != mr_shift  # one offset per patient, not one per run
    assert ct_shift == day(out["CT", 1].ContentDate) - day(ct1_in.ContentDate)
    gap = day(out["CT", 2].ContentDate) - day(out["CT", 1].ContentDate)
    assert gap == datetime.timedelta(days=CT_DAYS_APART)
    hours = date_offset_hours(SALT.encode(), "1CT1")
    shifted = datetime.datetime.strptime(ct1_in.StudyDate + ct1_in.StudyTime[:6], "%Y%m%d%H%M%S")
    shifted += datetime.timedelta(hours=hours)
    assert out["CT", 1].StudyDate + out["CT", 1].StudyTime[:6] == shifted.strftime("%Y%m%d%H%M%S")


def test_pixels_unchanged_and_sources_untouched(sources, tmp_path):
    files = sorted(p for p in sources.rglob("*") if p.is_file())
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    result = deidentify([sources], tmp_path / "out", salt=SALT, progress=False)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == before
    assert sorted(p for p in sources.rglob("*") if p.is_file()) == files
    out = _by_instance(result)
    for name, key in (("ct1", ("CT", 1)), ("ct2", ("CT", 2)), ("mr", ("MR", 1))):
        original = pydicom.dcmread(sources / PATIENT_DIR / f"DOE^JOHN_{name}.dcm")
        assert out[key].PixelData == original.PixelData
        np.testing.assert_array_equal(out[key].pixel_array, original.pixel_array)


def test_burned_in_annotation_is_quarantined_unless_allowed(sources, tmp_path):
    burned = sources / PATIENT_DIR / "DOE^JOHN_burned.dcm"
    result = deidentify([sources], tmp_path / "out", salt=SALT, progress=False)
    rows = {row["id"]: row for row in _quarantine(result)}
    burned_id = pseudonymize(str(burned.resolve()), SALT.encode(), "file")
    assert rows[burned_id]["suffix"] == ".dcm"
    assert rows[burned_id]["reason"].startswith("BurnedInAnnotation is YES")
    assert all(pydicom.dcmread(p).get("BurnedInAnnotation") != "YES" for p in result.written)

    allowed = deidentify(
        [sources], tmp_path / "allowed", salt=SALT, allow_burned_in=True, progress=False
    )
    assert burned_id not in {row["id"] for row in _quarantine(allowed)}
    copies = [pydicom.dcmread(p) for p in allowed.written]
    kept = [ds for ds in copies if ds.get("BurnedInAnnotation") == "YES"]
    assert len(kept) == 1 and kept[0].PatientIdentityRemoved == "NO"
    assert len(copies) == len(result.written) + 1
    names = sorted(p.name for p in allowed.written if pydicom.dcmread(p).Modality == "MR")
    assert names == ["1.dcm", "index-1.dcm"]  # same series and InstanceNumber: no overwrite


def test_paths_and_quarantine_hold_no_part_of_a_source_path(sources, tmp_path):
    out_dir = tmp_path / "out"
    result = deidentify([sources], out_dir, salt=SALT, progress=False)
    salt = SALT.encode()
    source_parts = {part for p in sources.rglob("*") for part in p.relative_to(sources).parts}
    written = [p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"quarantine.csv", "1.dcm", "2.dcm"}
    for rel in written:
        assert not set(rel.parts) & source_parts, rel
        assert not re.search(r"DOE|JOHN|0012345", str(rel)), rel
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    expected = (
        out_dir
        / pseudonymize("1CT1", salt, "pat")
        / pseudonymize(ct.StudyInstanceUID, salt, "st")
        / pseudonymize(ct.SeriesInstanceUID, salt, "se")
        / "1.dcm"
    )
    assert expected in result.written

    text = result.quarantine.read_text()
    assert not re.search(r"DOE|JOHN|0012345|src|notes|broken", text), text
    rows = {row["id"]: row for row in _quarantine(result)}
    src = sources / PATIENT_DIR

    def row(name: str) -> dict:
        return rows[pseudonymize(str((src / name).resolve()), salt, "file")]

    assert len(rows) == 3
    assert row("DOE^JOHN_notes.txt") == {
        "id": row("DOE^JOHN_notes.txt")["id"],
        "suffix": ".txt",
        "reason": "not a DICOM file (no DICM marker)",
    }
    assert row("DOE^JOHN_broken.dcm")["reason"] == "unreadable DICOM file (error)"  # zlib.error
    assert row("DOE^JOHN_burned.dcm")["suffix"] == ".dcm"


def test_same_salt_gives_the_same_copies_across_runs(sources, tmp_path):
    runs = [
        deidentify([sources], tmp_path / name, salt=salt, progress=False)
        for name, salt in (("a", SALT), ("b", SALT), ("c", "another-salt"))
    ]
    uids = []
    for run, name in zip(runs, "abc", strict=True):
        rel = sorted(p.relative_to(tmp_path / name) for p in run.written)
        datasets = [pydicom.dcmread(tmp_path / name / r) for r in rel]
        uids.append([(ds.SOPInstanceUID, ds.StudyDate, ds.PatientID) for ds in datasets])
        run.rel = rel
    assert runs[0].rel == runs[1].rel and uids[0] == uids[1]
    assert not set(runs[0].rel) & set(runs[2].rel)
    assert not {u[0] for u in uids[0]} & {u[0] for u in uids[2]}


def test_salt_file_is_created_and_reused(sources, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDFM_PSEUDONYM_SALT", raising=False)
    out_dir = tmp_path / "out"
    first = deidentify([sources], out_dir, progress=False)
    assert (out_dir / SALT_FILE).is_file()
    again = deidentify([sources], out_dir, progress=False)
    assert sorted(first.written) == sorted(again.written)
    assert len(list(out_dir.rglob("*.dcm"))) == len(first.written)


def test_cli_writes_copies_and_honours_allow_burned_in(sources, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    deidentify_cmd.add_parser(parser.add_subparsers())
    out_dir = tmp_path / "cli"
    args = parser.parse_args(
        ["deidentify", str(sources), "--out", str(out_dir), "--salt", SALT, "--no-progress"]
    )
    assert args.run(args) == 0
    assert "Wrote 3 de-identified files" in capsys.readouterr().out
    args = parser.parse_args(
        [
            "deidentify",
            str(sources / PATIENT_DIR / "DOE^JOHN_burned.dcm"),
            "--out",
            str(tmp_path / "cli2"),
            "--salt",
            SALT,
            "--no-progress",
            "--allow-burned-in",
        ]
    )
    assert args.run(args) == 0
    assert "Wrote 1 de-identified files" in capsys.readouterr().out
    assert len(list((tmp_path / "cli2").rglob("*.dcm"))) == 1
