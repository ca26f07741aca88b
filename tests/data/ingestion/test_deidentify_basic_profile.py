"""Every row of DICOM PS3.15 Table E.1-1 (:mod:`medfm.data.ingestion.basic_profile`), set on real
pydicom-data files and checked after ``medfm deidentify``.

Two CT_small instances of one study and MR_small (another patient) get every attribute of the
table, each with a recognisable value of its VR (sequences one item with an identifying element);
the command elements (group 0000), which pydicom's ``dcmwrite`` refuses, are written with
``write_dataset``, so every one of the table's 617 keywords is in the sources. After
de-identification each ``X`` is gone, each ``Z`` empty or a dummy, each ``D`` a new value, each
``U`` a new UID (the same one in both files of the study), every date and time shifted by the
patient's own offset (the Retain Longitudinal Temporal Information with Modified Dates option),
private, curve and overlay elements gone, and the pixels unchanged.
"""

from __future__ import annotations

import copy
import datetime
import re

import pydicom
import pytest
from dicognito.anonymizer import Anonymizer
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info

from medfm.data.ingestion.basic_profile import BASIC_PROFILE, DATE_VRS, DATES_NOT_MODIFIED
from medfm.data.ingestion.deidentify import (
    MEDFM_ACTIONS,
    date_offset_hours,
    deidentify,
    dicognito_replaces,
)

SALT = "test-salt"
PATIENT_DIR = "DOE^JOHN_0012345"
MARK = "QQX"  # in every value put into the sources; in no name, UID or digest dicognito makes
UID_ROOT = "1.2.826.0.1.3680043.10.999."
DATE, TIME = "20200115", "101530"
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
# Identifiers the files keep from pydicom-data: they name the patient, study and instance.
KEEP = {"PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
FILE_META = {"MediaStorageSOPInstanceUID"}  # group 0002: the file's own meta information
COMMAND = {kw for kw in BASIC_PROFILE if keyword_dict[kw] >> 16 == 0x0000}
CT2_UID = UID_ROOT + "9001"
RAW_MARKS = (MARK.encode(), b"DOE^JOHN", b"CompressedSamples", b"JFK IMAGING")
# pydicom reads the command elements of the sources with this warning.
pytestmark = pytest.mark.filterwarnings("ignore:Expected implicit VR:UserWarning")


def _value(keyword: str, index: int, referenced: Dataset):
    """(VR, a recognisable valid value) for one table keyword."""
    vr = dictionary_VR(keyword_dict[keyword]).split(" or ")[0]
    mark = f"{MARK}{index:03d}"
    if BASIC_PROFILE[keyword] == "X/Z/U*":  # a reference to the first CT instance
        item = Dataset()
        item.ReferencedSOPClassUID = referenced.SOPClassUID
        item.ReferencedSOPInstanceUID = referenced.SOPInstanceUID
        return vr, [item]
    if keyword == "ReferencedSOPInstanceUID":
        return vr, referenced.SOPInstanceUID
    if vr == "SQ":
        item = Dataset()
        item.CodeMeaning = f"{mark} DOE^JOHN"
        return vr, [item]
    texts = {"AE": mark, "CS": mark, "SH": mark, "UR": f"http://{mark.lower()}.example/doe"}
    texts.update(dict.fromkeys(("LO", "ST", "LT", "UT", "UC"), f"{mark} DOE^JOHN 0012345"))
    texts.update(PN=f"DOE^JOHN^{mark}", DA=DATE, TM=TIME, DT=DATE + TIME, AS="042Y")
    texts.update(DS="1.5", IS="12", UI=f"{UID_ROOT}{index}")
    if vr in texts:
        return vr, texts[vr]
    if vr in ("OB", "OW", "UN"):
        return vr, f"{mark}DOE^JOHN!".encode()
    if vr in ("OD", "OF", "OL", "OV"):
        return vr, bytes(range(8))
    return vr, 1.5 if vr in ("FL", "FD") else 7


def _with_every_attribute(ds: Dataset, referenced: Dataset) -> Dataset:
    for index, keyword in enumerate(sorted(BASIC_PROFILE)):
        if keyword not in KEEP | FILE_META:
            vr, value = _value(keyword, index, referenced)
            ds.add_new(keyword_dict[keyword], vr, value)
    ds.private_block(0x0099, "MEDFM TEST", create=True).add_new(0x01, "LO", f"{MARK} DOE^JOHN")
    item = ds.ReferencedImageSequence[0]
    item.private_block(0x0099, "MEDFM TEST", create=True).add_new(0x01, "LO", f"{MARK} private")
    ds.add_new(0x60003000, "OW", bytes(8))  # Overlay Data
    ds.add_new(0x60004000, "LT", f"{MARK} overlay DOE^JOHN")  # Overlay Comments
    ds.add_new(0x50003000, "OB", f"{MARK}CURVE".encode())  # Curve Data (retired)
    return ds


def _write(ds: Dataset, path) -> None:
    """Write a Part 10 file that keeps its command (0000,eeee) elements, as some exports do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        fp = DicomFileLike(f)
        write_file_meta_info(fp, ds.file_meta)
        syntax = ds.file_meta.TransferSyntaxUID
        fp.is_little_endian, fp.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
        write_dataset(fp, ds)


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """``{(Modality, InstanceNumber): (source dataset as read back, de-identified copy)}``."""
    tmp = tmp_path_factory.mktemp("profile")
    folder = tmp / "src" / PATIENT_DIR
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct = _with_every_attribute(ct, referenced=copy.deepcopy(ct))
    _write(ct, folder / "DOE^JOHN_ct1.dcm")
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = CT2_UID
    ct.InstanceNumber = 2
    _write(ct, folder / "DOE^JOHN_ct2.dcm")
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    _write(_with_every_attribute(mr, referenced=copy.deepcopy(mr)), folder / "DOE^JOHN_mr.dcm")
    sources = {n: pydicom.dcmread(folder / f"DOE^JOHN_{n}.dcm") for n in ("ct1", "ct2", "mr")}
    result = deidentify([tmp / "src"], tmp / "out", salt=SALT, progress=False)
    assert result.quarantined == []
    out = {(ds.Modality, int(ds.InstanceNumber)): ds for ds in map(pydicom.dcmread, result.written)}
    assert sorted(out) == [("CT", 1), ("CT", 2), ("MR", 1)]
    pairs = {("CT", 1): sources["ct1"], ("CT", 2): sources["ct2"], ("MR", 1): sources["mr"]}
    return {key: (pairs[key], out[key]) for key in out}, result


def _shifted(before: Dataset, keyword: str, hours: int) -> str:
    """The value PS3.15's Modified Dates option asks for: moved by the patient's offset; a date
    moves with its own time of day (midnight without one), a time by the offset modulo a day."""
    value, vr, delta = (
        str(before[keyword].value),
        before[keyword].VR,
        datetime.timedelta(hours=hours),
    )
    if vr == "TM":
        return f"{(int(value[:2]) + hours) % 24:02d}{value[2:]}"
    if vr == "DT":
        start = datetime.datetime.strptime(value[:10], "%Y%m%d%H")
        return (start + delta).strftime("%Y%m%d%H") + value[10:]
    time_keyword = keyword.replace("Date", "Time")
    has_time = time_keyword != keyword and time_keyword in keyword_dict
    time = str(before.get(time_keyword) or "") if has_time else ""
    start = datetime.datetime.strptime(value + (time[:2] or "00"), "%Y%m%d%H")
    return (start + delta).strftime("%Y%m%d")


def _identifying(value) -> bool:
    return MARK in str(value) or "DOE^JOHN" in str(value)


def _problem(keyword: str, before: Dataset, after: Dataset, hours: int) -> str | None:
    """Why ``after`` does not meet the table's action for ``keyword``, or None."""
    action, old = BASIC_PROFILE[keyword], before[keyword]
    if keyword in COMMAND:  # a stored instance may not hold command elements at all
        return "command element kept" if keyword in after else None
    if old.VR in DATE_VRS and keyword not in DATES_NOT_MODIFIED:
        expected = _shifted(before, keyword, hours)
        new = after[keyword].value if keyword in after else None
        return None if new == expected else f"{old.value!r} -> {new!r}, not {expected!r}"
    if keyword not in after:
        return None if action.startswith("X") else f"removed, but {action} keeps it"
    new = after[keyword]
    if action == "X":
        return f"kept ({new.value!r})"
    if _identifying(new.value) or (not new.is_empty and new.value == old.value):
        return f"kept its value ({new.value!r})"
    if action == "X/Z/U*":
        uids = [item.ReferencedSOPInstanceUID for item in new.value]
        return None if all(u != old.value[0].ReferencedSOPInstanceUID for u in uids) else "UID"
    if action == "U" and not UID.fullmatch(str(new.value)):
        return f"{new.value!r} is not a UID"
    if "D" in action and new.is_empty:
        return f"empty, but {action} needs a dummy"
    return None  # Z: empty, or a dummy that is not the original


def test_every_table_attribute_is_removed_emptied_or_replaced(copies):
    pairs, _ = copies
    checked, problems = set(), []
    for before, after in pairs.values():
        hours = date_offset_hours(SALT.encode(), str(before.PatientID))
        for keyword in sorted(BASIC_PROFILE):
            if keyword in FILE_META:
                continue
            checked.add(keyword)
            if problem := _problem(keyword, before, after, hours):
                problems.append(
                    f"{before.Modality} {keyword} ({BASIC_PROFILE[keyword]}): {problem}"
                )
        assert after.PatientBirthDate == "" and after.PatientSex == ""  # Z, not shifted
    assert checked == set(BASIC_PROFILE) - FILE_META  # every row, 617 keywords minus the meta one
    assert problems == []


def test_dates_and_times_shift_by_each_patients_own_offset(copies):
    pairs, _ = copies
    (ct_before, ct), mr = pairs["CT", 1], pairs["MR", 1][1]
    ct_hours = date_offset_hours(SALT.encode(), "1CT1")
    assert ct_hours != date_offset_hours(SALT.encode(), "4MR1")
    shifted = datetime.datetime.strptime(DATE + TIME[:2], "%Y%m%d%H")
    assert ct.StudyDate == (shifted + datetime.timedelta(hours=ct_hours)).strftime("%Y%m%d")
    assert ct.StudyDate != mr.StudyDate and ct.StudyTime != mr.StudyTime
    # times without a date of their own move like the dated ones (same hour shift)
    assert ct.ContrastBolusStartTime[:2] == ct.StudyTime[:2]
    assert ct.SelectorDAValue == _shifted(ct_before, "SelectorDAValue", ct_hours)


def test_uids_are_remapped_consistently_across_the_study(copies):
    pairs, _ = copies
    (ct1_before, ct1), (ct2_before, ct2) = pairs["CT", 1], pairs["CT", 2]
    mr = pairs["MR", 1][1]
    uid_keywords = [kw for kw, action in BASIC_PROFILE.items() if action == "U"]
    compared = 0
    for keyword in set(uid_keywords) - COMMAND - FILE_META:
        same_before = ct1_before[keyword].value == ct2_before[keyword].value
        assert (ct1[keyword].value == ct2[keyword].value) == same_before, keyword
        assert ct1[keyword].value != ct1_before[keyword].value, keyword
        compared += 1
    assert compared == len(uid_keywords) - len(COMMAND & set(uid_keywords)) - 1
    assert ct1.SOPInstanceUID != ct2.SOPInstanceUID and ct1.StudyInstanceUID == ct2.StudyInstanceUID
    assert ct1.StudyInstanceUID != mr.StudyInstanceUID
    for ds in (ct1, ct2):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.ReferencedSOPInstanceUID == ct1.SOPInstanceUID  # the reference still resolves
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ct1.SOPInstanceUID
        assert (
            ds.ManufacturerDeviceClassUID == ct1.ManufacturerDeviceClassUID
        )  # medfm, not dicognito


def test_private_curve_and_overlay_data_go_and_pixels_stay(copies):
    pairs, result = copies
    for before, after in pairs.values():
        assert [e.tag for e in after.iterall() if e.tag.is_private] == []
        assert not [e.tag for e in after if e.tag.group in (0x5000, 0x6000)]
        assert after.PixelData == before.PixelData
        assert (after.pixel_array == before.pixel_array).all()
        assert after.PatientIdentityRemoved == "YES"
    for path in result.written:  # not one marked or original identifying value in the bytes
        raw = path.read_bytes()
        assert [mark for mark in RAW_MARKS if mark in raw] == [], path


def test_table_is_pydicoms_and_holds_the_auditors_findings():
    assert len(BASIC_PROFILE) == 617 and set(BASIC_PROFILE) <= set(keyword_dict)
    assert set(BASIC_PROFILE.values()) == {
        "X",
        "Z",
        "D",
        "U",
        "X/Z",
        "X/D",
        "Z/D",
        "X/Z/D",
        "X/Z/U*",
    }
    found = {
        "PerformedStationName": "X",
        "PerformedStationAETitle": "X",
        "ScheduledStationAETitle": "X",
        "TimezoneOffsetFromUTC": "X",
        "DeviceLabel": "D",
        "OrderEntererLocation": "X",
        "OrderCallbackPhoneNumber": "X",
        "InstitutionCodeSequence": "X/Z/D",
        "PatientPrimaryLanguageCodeSequence": "X",
        "PerformedStationGeographicLocationCodeSequence": "X",
        "ScheduledStationGeographicLocationCodeSequence": "X",
    }
    assert {kw: BASIC_PROFILE[kw] for kw in found} == found
    assert all(kw in MEDFM_ACTIONS for kw in found)  # dicognito leaves every one of them


@pytest.mark.filterwarnings("ignore:Invalid value .* used with the 'in' operator:UserWarning")
def test_medfm_leaves_to_dicognito_only_what_dicognito_replaces():
    """A bare dicognito ``Anonymizer`` changes every table attribute medfm leaves to it (so a
    dicognito upgrade that stops doing so fails here), and none it is not credited with."""
    ds, referenced = Dataset(), Dataset()
    ds.file_meta = FileMetaDataset()
    referenced.SOPClassUID, referenced.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", UID_ROOT + "1"
    for index, keyword in enumerate(sorted(set(BASIC_PROFILE) - COMMAND - FILE_META)):
        ds.add_new(keyword_dict[keyword], *_value(keyword, index, referenced))
    before = copy.deepcopy(ds)
    Anonymizer(seed="any").anonymize(ds)
    for keyword in before.dir():
        vr, action = before[keyword].VR, BASIC_PROFILE[keyword]
        changed = keyword not in ds or ds[keyword].value != before[keyword].value
        dated = vr in DATE_VRS and keyword not in DATES_NOT_MODIFIED
        left_to_dicognito = keyword not in MEDFM_ACTIONS and not dated and action != "X/Z/U*"
        assert changed or not left_to_dicognito, keyword
        if dicognito_replaces(keyword, vr):
            assert changed and keyword in ds and not _identifying(ds[keyword].value), keyword
