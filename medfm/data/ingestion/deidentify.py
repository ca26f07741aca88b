"""De-identified copies (``medfm deidentify``): DICOM following the DICOM PS3.15 Annex E Basic
Application Level Confidentiality Profile with the *Retain Longitudinal Temporal Information with
Modified Dates* option, NIfTI and PNG without free-text metadata, all under pseudonyms.

* **pydicom** reads and writes the DICOM files; its dictionary gives each keyword's VR.
* **dicognito**, rather than pydicom's ``deid`` companion (it is maintained, supports pydicom 3,
  is pure Python with pydicom as its only dependency and needs no recipe files), replaces, keyed
  by one seed, every UI but class and transfer-syntax UIDs (one input UID, one output UID, so
  references within a study still resolve), every PN, some IDs, addresses and InstitutionName
  (:data:`DICOGNITO_REPLACED`), and shifts every DA and DT with the TM named like it. It does not
  claim the whole Basic Profile: 338 of the 617 rows of Table E.1-1 (PerformedStationName,
  TimezoneOffsetFromUTC, DeviceLabel, ...) it leaves as they are, and it has one date offset.
* **medfm** keeps the table as data (:mod:`medfm.data.ingestion.basic_profile`) and, after
  dicognito, applies each action dicognito's result does not meet (:data:`MEDFM_ACTIONS`): ``X``
  removed (also where dicognito put a dummy), ``Z`` and ``X/Z`` emptied, ``D``, ``X/D``, ``Z/D``
  and ``X/Z/D`` given a keyed dummy (which keeps every IOD valid), ``U`` remapped
  (ManufacturerDeviceClassUID, which dicognito takes for a class UID). Under the option every
  date and time but the birth date and time is shifted per patient: each patient gets a
  dicognito date shifter of their own, extended to the dates and times dicognito skips, with an
  offset of 62 to 730 days back (dicognito's range) derived from the salt and PatientID. Private,
  curve, overlay and command (group 0000) elements go; PatientIdentityRemoved,
  LongitudinalTemporalInformationModified and DeidentificationMethodCodeSequence (DCM 113100,
  113107) are set, as PS3.15 E.1.1 asks.
* **nibabel** copies NIfTI (.nii, .nii.gz) with the header's free-text fields (descrip, aux_file,
  intent_name, db_name) empty and no extensions; voxels are written as stored, same scaling.
* **Pillow** (already a medfm dependency) re-saves PNG files, slide tiles included, from their
  pixels alone: no text, EXIF, ICC or other ancillary chunk is carried over.

Seed, offsets, dummies and names come from the pseudonym salt (:func:`.pseudonym.resolve_salt`),
so the same salt gives the same copies in every run. DICOM copies are
``<patient>/<study>/<series>/<instance>.dcm``, NIfTI and PNG copies ``<patient>/<id><suffix>``,
named by the pseudonyms ``medfm ingest`` gives the same sources (its ``patient``, ``study``,
``series`` and ``id`` columns), never by a part of a source path. Files with
BurnedInAnnotation=YES are quarantined unless ``allow_burned_in``; pixel data is never altered,
so the Clean Pixel Data option is not claimed. Other, unreadable and quarantined files get a row
in ``quarantine.csv``: a pseudonymous id, the suffix and a reason without a path. Sources are
only read.

Example:
    >>> result = deidentify(["raw/"], "deid/", salt="site-secret")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from dicognito.anonymizer import Anonymizer
from dicognito.datetimeanonymizer import DateTimeAnonymizer
from PIL import Image
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from tqdm.auto import tqdm

from medfm.data.ingestion.basic_profile import BASIC_PROFILE, DATE_VRS, DATES_NOT_MODIFIED
from medfm.data.ingestion.ingest import scan
from medfm.data.ingestion.manifest import write_csv
from medfm.data.ingestion.pseudonym import pseudonymize, resolve_salt
from medfm.data.ingestion.source_map import shareable_suffix
from medfm.data.sources.readers import file_format
from medfm.io import atomic_path

QUARANTINE_FILE = "quarantine.csv"
QUARANTINE_COLUMNS = ("id", "suffix", "reason")
# dicognito's own offset range: 62 to 730 days into the past.
MIN_OFFSET_HOURS, MAX_OFFSET_HOURS = 62 * 24, 730 * 24
PROFILE_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
# Keywords dicognito 0.19 replaces by name (IDAnonymizer, AddressAnonymizer, EquipmentAnonymizer);
# besides these it replaces every PN, every UI but class and transfer-syntax UIDs, every DA/DT.
DICOGNITO_REPLACED = frozenset(
    """
    AccessionNumber CountryOfResidence FillerOrderNumberImagingServiceRequest
    FillerOrderNumberImagingServiceRequestRetired FillerOrderNumberProcedure InstitutionAddress
    InstitutionName InstitutionalDepartmentName IssuerOfPatientID OtherPatientIDs PatientAddress
    PatientID PerformedProcedureStepID PlacerOrderNumberImagingServiceRequest
    PlacerOrderNumberImagingServiceRequestRetired PlacerOrderNumberProcedure RegionOfResidence
    RequestedProcedureID ScheduledProcedureStepID StationName StudyID
    """.split()
)
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")
_TEXT_VRS = frozenset({"AE", "CS", "SH", "LO", "ST", "LT", "UT", "UC", "UR"})
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})


def dicognito_replaces(keyword: str, vr: str) -> bool:
    """Whether dicognito replaces this attribute's value by a dummy or a new UID (its date shift
    is no dummy: the Modified Dates option decides which dates may be shifted)."""
    if vr == "UI":
        return not keyword.endswith("ClassUID") and keyword != "TransferSyntaxUID"
    return vr == "PN" or keyword in DICOGNITO_REPLACED


def medfm_action(keyword: str, action: str, vr: str) -> str | None:
    """What medfm does, after dicognito, to an attribute with Basic Profile ``action``:
    ``"remove"``, ``"empty"``, ``"dummy"``, ``"uid"``, or ``None`` (dicognito's result meets the
    action, or the Modified Dates option shifts it)."""
    if vr in DATE_VRS and keyword not in DATES_NOT_MODIFIED:
        return None  # shifted per patient (DA/DT by dicognito, lone TMs by _PatientDates)
    if action == "X":
        return "remove"
    if action == "X/Z/U*" or dicognito_replaces(keyword, vr):
        return None  # the sequence stays, the UIDs in its items are remapped
    if action == "U":
        return "uid"
    return "dummy" if "D" in action else "empty"


MEDFM_ACTIONS = {
    keyword: todo
    for keyword, action in BASIC_PROFILE.items()
    if (todo := medfm_action(keyword, action, dictionary_VR(keyword_dict[keyword])))
}


@dataclasses.dataclass
class DeidentifyResult:
    """What :func:`deidentify` wrote: the de-identified files and the quarantine table."""

    written: list[Path]
    quarantine: Path
    quarantined: list[dict]


def _digest(salt: bytes, purpose: str, value: str) -> str:
    return hmac.new(salt, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def date_offset_hours(salt: bytes, patient_key: str) -> int:
    """The (negative) shift in hours for one patient's dates: 62 to 730 days into the past."""
    span = MAX_OFFSET_HOURS - MIN_OFFSET_HOURS
    return -(int(_digest(salt, "date-offset", patient_key), 16) % span + MIN_OFFSET_HOURS)


def _each(value, change: Callable[[str], str]):
    return [change(v) for v in value] if isinstance(value, MultiValue | list) else change(value)


def shift_date(value: str, hours: int) -> str:
    """A DA value moved by ``hours`` (from midnight, as dicognito moves a date without a time)."""
    day = datetime.datetime.strptime(value.replace(".", "").strip()[:8], "%Y%m%d")
    return (day + datetime.timedelta(hours=hours)).strftime("%Y%m%d")


def shift_time(value: str, hours: int) -> str:
    """A TM value moved by ``hours`` modulo a day, as dicognito moves the time of a dated TM."""
    clean = value.replace(":", "").strip()
    return f"{(int(clean[:2]) + hours) % 24:02d}{clean[2:]}" if clean else value


def _is_dated(dataset: Dataset, time_keyword: str) -> bool:
    """Whether dicognito shifts this TM with its DA (``StudyTime`` with a non-empty StudyDate)."""
    date_keyword = time_keyword.replace("Time", "Date")
    paired = date_keyword != time_keyword and date_keyword.replace("Date", "Time") == time_keyword
    return paired and bool(dataset.get(date_keyword))


class _PatientDates(DateTimeAnonymizer):
    """dicognito's date shifter with one patient's offset, extended to what it skips: a DA with no
    TM keyword of its own (dicognito looks for the time under an invalid keyword, or under the
    date itself for SelectorDAValue) and a TM without a dated DA (its hour moves by the offset
    modulo a day, as dicognito's dated times do)."""

    def __init__(self, offset_hours: int) -> None:
        super().__init__(offset_hours)
        self.hours = offset_hours

    def __call__(self, dataset: Dataset, data_element: pydicom.DataElement) -> bool:
        keyword, value = data_element.keyword, data_element.value
        if data_element.VR == "TM":
            if value and not _is_dated(dataset, keyword):
                data_element.value = _each(value, lambda v: shift_time(v, self.hours))
            return True
        time_keyword = keyword.replace("Date", "Time")  # where dicognito looks for the DA's TM
        lone = time_keyword == keyword or time_keyword not in keyword_dict
        if data_element.VR == "DA" and lone:
            if value:
                data_element.value = _each(value, lambda v: shift_date(v, self.hours))
            return True
        return super().__call__(dataset, data_element)


class _Anonymizers:
    """One dicognito ``Anonymizer`` per patient: all share one seed (so UIDs, names and IDs map
    the same everywhere), each with its own :class:`_PatientDates` in front."""

    def __init__(self, salt: bytes) -> None:
        self.salt = salt
        self.seed = _digest(salt, "dicognito-seed", "")
        self.by_patient: dict[str, Anonymizer] = {}

    def __call__(self, patient_key: str) -> Anonymizer:
        if patient_key not in self.by_patient:
            anonymizer = Anonymizer(seed=self.seed)
            anonymizer.add_element_handler(_PatientDates(date_offset_hours(self.salt, patient_key)))
            self.by_patient[patient_key] = anonymizer
        return self.by_patient[patient_key]


def _dummy(elem: pydicom.DataElement, salt: bytes):
    """A non-empty value of the element's VR that tells nothing: text becomes ``ANON`` and a keyed
    digest of the original (one value, one dummy), a sequence one empty item."""
    vr = elem.VR
    if vr == "SQ":
        return [Dataset()]
    if vr in _TEXT_VRS:
        return "ANON" + _digest(salt, "dummy", f"{elem.keyword}:{elem.value}")[:12].upper()
    if vr == "AS":
        return "000D"
    if vr in ("IS", "DS"):
        return "0"
    return bytes(8) if vr in _BYTES_VRS else 0


def _apply_basic_profile(ds: Dataset, salt: bytes, seed: str) -> None:
    """Apply :data:`MEDFM_ACTIONS` (in nested sequences too) and remove curve and overlay data."""

    def visit(dataset: Dataset, elem: pydicom.DataElement) -> None:
        group, todo = elem.tag.group, MEDFM_ACTIONS.get(elem.keyword)
        curve = 0x5000 <= group <= 0x501E and group % 2 == 0  # curve data (retired)
        overlay = 0x6000 <= group <= 0x601E and elem.tag.element in (0x3000, 0x4000)
        if curve or overlay or todo == "remove":
            del dataset[elem.tag]
        elif todo == "empty":
            elem.value = [] if elem.VR == "SQ" else None
        elif todo == "dummy" and not elem.is_empty:
            elem.value = _dummy(elem, salt)
        elif todo == "uid" and not elem.is_empty:
            elem.value = _each(elem.value, lambda uid: generate_uid(entropy_srcs=[seed, uid]))

    ds.walk(visit)


def _mark_deidentified(ds: Dataset, burned_in: bool) -> None:
    ds.PatientIdentityRemoved = "NO" if burned_in else "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    items = [Dataset() for _ in PROFILE_CODES]
    for item, (value, meaning) in zip(items, PROFILE_CODES, strict=True):
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    ds.DeidentificationMethodCodeSequence = items


def _deidentify_dataset(ds: Dataset, anonymizers: _Anonymizers, patient_key: str) -> None:
    """De-identify one dataset in place: private and command elements go, dicognito runs with the
    patient's date offset, then medfm applies the rest of the Basic Profile."""
    ds.remove_private_tags()
    for tag in [tag for tag in ds.keys() if tag.group == 0x0000]:
        del ds[tag]
    anonymizers(patient_key).anonymize(ds)
    _apply_basic_profile(ds, anonymizers.salt, anonymizers.seed)


def _pseudonym(ds: Dataset, keyword: str, prefix: str, salt: bytes, fallback: str) -> str:
    """Pseudonym of the original ``keyword`` value, or of ``fallback`` when it is empty."""
    return pseudonymize(str(ds.get(keyword, "") or "").strip() or fallback, salt, prefix)


def _instance_name(ds: Dataset, used: set[str]) -> str:
    """``<InstanceNumber>.dcm``, or the next free index when it is missing or already taken."""
    number = ds.get("InstanceNumber")
    try:
        name = f"{int(number)}.dcm" if number not in (None, "") else ""
    except (TypeError, ValueError):
        name = ""
    index = 0
    while not name or name in used:
        index += 1
        name = f"index-{index}.dcm"
    used.add(name)
    return name


def _quarantine_row(file: Path, reason: str, salt: bytes) -> dict:
    file_id = pseudonymize(str(file.resolve()), salt, "file")
    return {"id": file_id, "suffix": shareable_suffix(file), "reason": reason}


@dataclasses.dataclass
class _Run:
    """What one :func:`deidentify` call shares between files."""

    out: Path
    key: bytes
    allow_burned_in: bool
    anonymizers: _Anonymizers
    used: dict[Path, set[str]] = dataclasses.field(default_factory=lambda: defaultdict(set))


def _dicom_copy(file: Path, run: _Run) -> Path | str:
    """Write the de-identified copy of one DICOM file; its path, or the reason it was set aside."""
    try:
        ds = pydicom.dcmread(file, force=False)
    except InvalidDicomError:
        return "not a DICOM file (no DICM marker)"
    except Exception as exc:  # pydicom raises many types on damaged files
        return f"unreadable DICOM file ({type(exc).__name__})"
    if not (ds.get("SOPClassUID") and ds.get("SOPInstanceUID")):
        return "DICOM file without SOPClassUID/SOPInstanceUID (damaged or not an instance)"
    burned_in = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    if burned_in and not run.allow_burned_in:
        reason = "BurnedInAnnotation is YES (pixels may show identifying text); copy it with "
        return reason + "--allow-burned-in"
    folder_key = str(file.parent)
    patient_key = str(ds.get("PatientID", "") or "").strip() or folder_key
    folder = (
        run.out
        / pseudonymize(patient_key, run.key, "pat")
        / _pseudonym(ds, "StudyInstanceUID", "st", run.key, folder_key)
        / _pseudonym(ds, "SeriesInstanceUID", "se", run.key, folder_key)
    )
    try:
        _deidentify_dataset(ds, run.anonymizers, patient_key)
        _mark_deidentified(ds, burned_in)
    except Exception as exc:  # e.g. a date that cannot be parsed
        return f"de-identification failed ({type(exc).__name__})"
    dest = folder / _instance_name(ds, run.used[folder])
    with atomic_path(dest) as tmp:
        ds.save_as(tmp)
    return dest


def _write_nifti(file: Path, dest: Path) -> None:
    """Copy a NIfTI file with its free-text header fields empty and no header extensions."""
    img = nib.load(file)
    header = img.header.copy()
    header.extensions.clear()
    for field in NIFTI_TEXT_FIELDS:
        if field in header:
            header[field] = b""
    stored = np.asanyarray(img.dataobj.get_unscaled())  # the voxels as stored, not rescaled
    clean = type(img)(stored, img.affine, header)
    clean.header.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
    with atomic_path(dest) as tmp:
        nib.save(clean, tmp)


def _write_png(file: Path, dest: Path) -> None:
    """Re-save a PNG file from its pixels (and palette transparency) alone."""
    with Image.open(file) as img:
        if getattr(img, "is_animated", False):
            raise ValueError("animated PNG")
        clean = img.copy()
    clean.info = {k: v for k, v in clean.info.items() if k == "transparency"}
    with atomic_path(dest) as tmp:
        clean.save(tmp, format="PNG")


def _image_copy(file: Path, fmt: str, run: _Run) -> Path | str:
    """The copy of a NIfTI or PNG file as ``<patient>/<id><suffix>`` (the folder is the patient,
    as in ``medfm ingest``), or the reason it was set aside."""
    patient = pseudonymize(file.parent.name, run.key, "pat")
    dest = run.out / patient / (pseudonymize(str(file), run.key, "img") + shareable_suffix(file))
    try:
        (_write_nifti if fmt == "nifti" else _write_png)(file, dest)
    except Exception as exc:  # nibabel and Pillow raise many types on damaged files
        return f"unreadable {'NIfTI' if fmt == 'nifti' else 'PNG'} file ({type(exc).__name__})"
    return dest


def deidentify(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    salt: str | None = None,
    allow_burned_in: bool = False,
    progress: bool = True,
) -> DeidentifyResult:
    """Write de-identified copies of the DICOM, NIfTI and PNG files under ``sources`` to
    ``out_dir`` and the files set aside to ``out_dir/quarantine.csv``; see the module docstring
    for what is changed and how the copies are named."""
    out = Path(out_dir)
    key = resolve_salt(out, salt)
    files = sorted({f.resolve() for f, _ in scan(sources)})
    files = [f for f in files if not f.is_relative_to(out.resolve())]  # never our own outputs
    run = _Run(out, key, allow_burned_in, _Anonymizers(key))
    written, quarantined = [], []
    for file in tqdm(files, desc="deidentify", unit="file", disable=not progress):
        fmt = file_format(file)
        copy = _image_copy(file, fmt, run) if fmt in ("nifti", "png") else _dicom_copy(file, run)
        if isinstance(copy, Path):
            written.append(copy)
        else:
            quarantined.append(_quarantine_row(file, copy, key))
    quarantine = write_csv(quarantined, out / QUARANTINE_FILE, QUARANTINE_COLUMNS)
    return DeidentifyResult(written=written, quarantine=quarantine, quarantined=quarantined)
