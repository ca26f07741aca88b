"""De-identified copies of DICOM files (``medfm deidentify``), following the DICOM PS3.15 Annex E
Basic Application Level Confidentiality Profile with the *Retain Longitudinal Temporal Information
with Modified Dates* option.

The header work is done by `dicognito <https://github.com/blairconrad/dicognito>`_ rather than by
pydicom's ``deid`` companion: dicognito is maintained (0.19.0 supports Python 3.10-3.14 and
pydicom 3), pure Python with pydicom as its only dependency, and needs no recipe files to
maintain. Out of the box it replaces every UI (except class and transfer-syntax UIDs), PN, DA, DT
and TM value and a fixed list of identifying IDs, addresses and institution fields, keyed by a
seed, so one seed always maps one input UID to the same output UID. Its README does *not* claim
the whole Basic Profile, and it shifts every date by *one* offset per ``Anonymizer``, not per
patient, and keeps private tags. This module therefore adds, on top of dicognito:

* a date offset per patient (62 to 730 days into the past, like dicognito's own range), derived
  from the salt and the original PatientID, so one patient's dates keep their differences;
* removal of all private tags, overlay and curve data, and of the Basic Profile's free-text and
  device attributes that dicognito keeps (:data:`BASIC_PROFILE_REMOVE`), and empty values for its
  ``Z`` attributes that dicognito shifts or keeps (:data:`BASIC_PROFILE_EMPTY`);
* PatientIdentityRemoved, LongitudinalTemporalInformationModified and
  DeidentificationMethodCodeSequence (DCM 113100 and 113107), as PS3.15 E.1.1 asks.

dicognito's seed and the per-patient offsets come from the pseudonym salt
(:func:`medfm.data.ingestion.pseudonym.resolve_salt`): the same salt gives the same UIDs, dates
and file names across runs. Files with BurnedInAnnotation=YES (their pixels may show a name) are
quarantined unless ``allow_burned_in``; pixel data is never altered, so the Clean Pixel Data
option is not claimed. Output files are named only by pseudonyms of the original patient, study
and series identifiers (the ``patient``/``study``/``series`` columns ``medfm ingest`` writes for
the same sources and salt), never by a part of the source path. Non-DICOM, unreadable and
quarantined files get a row in ``quarantine.csv`` with a pseudonymous id, the suffix and a reason
that holds no path. Source files are only read.

Example:
    >>> result = deidentify(["raw/"], "deid/", salt="site-secret")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer
from dicognito.datetimeanonymizer import DateTimeAnonymizer
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from tqdm.auto import tqdm

from medfm.data.ingestion.ingest import scan
from medfm.data.ingestion.manifest import write_csv
from medfm.data.ingestion.pseudonym import pseudonymize, resolve_salt
from medfm.data.ingestion.source_map import shareable_suffix
from medfm.io import atomic_path

QUARANTINE_FILE = "quarantine.csv"
QUARANTINE_COLUMNS = ("id", "suffix", "reason")
# dicognito's own offset range: 62 to 730 days into the past.
MIN_OFFSET_HOURS, MAX_OFFSET_HOURS = 62 * 24, 730 * 24
# Basic Profile (PS3.15 Table E.1-1) attributes with action X that dicognito keeps.
BASIC_PROFILE_REMOVE = frozenset(
    """
    AcquisitionComments AcquisitionDeviceProcessingDescription AcquisitionProtocolDescription
    ActualHumanPerformersSequence AdditionalPatientHistory AdmissionID
    AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription Allergies Arbitrary
    AuthorObserverSequence CommentsOnThePerformedProcedureStep
    ConfidentialityConstraintOnPatientDataDescription ContentCreatorIdentificationCodeSequence
    ContributionDescription CustodialOrganizationSequence DerivationDescription DetectorID
    DeviceSerialNumber DischargeDiagnosisDescription DistributionAddress EthnicGroup FrameComments
    GantryID GeneratorID HumanPerformerOrganization IconImageSequence IdentifyingComments
    ImageComments InstitutionAddress InsurancePlanIdentification
    IntendedRecipientsOfResultsIdentificationSequence InterpretationApproverSequence
    InterpretationAuthor InterpretationDiagnosisDescription InterpretationRecorder
    InterpretationText InterpretationTranscriber IssuerOfAdmissionID MedicalAlerts
    ModifiedAttributesSequence OperatorIdentificationSequence OriginalAttributesSequence
    OtherPatientIDsSequence PatientAge PatientBirthName PatientBirthTime PatientComments
    PatientInstitutionResidence PatientMotherBirthName PatientSexNeutered PatientSize
    PatientState PatientTransportArrangements PatientWeight PerformedLocation
    PerformedProcedureStepDescription PerformingPhysicianIdentificationSequence PersonAddress
    PersonTelephoneNumbers PhysicianApprovingInterpretation
    PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence PlateID
    PreMedication PregnancyStatus ProtocolName ReasonForTheImagingServiceRequest ReasonForStudy
    ReferencedPatientAliasSequence ReferringPhysicianAddress
    ReferringPhysicianIdentificationSequence ReferringPhysicianTelephoneNumbers
    RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments
    RequestedProcedureDescription RequestedProcedureLocation ResultsComments ResultsIDIssuer
    ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
    ScheduledProcedureStepDescription ScheduledProcedureStepLocation ScheduledStationName
    SeriesDescription ServiceEpisodeDescription ServiceEpisodeID SmokingStatus SpecialNeeds
    StudyComments StudyDescription StudyIDIssuer TextComments TextString TopicAuthor
    TopicKeywords TopicSubject TopicTitle VerifyingObserverIdentificationCodeSequence
    VerifyingOrganization VisitComments
    """.split()
)
# Basic Profile attributes with action Z (kept, empty) that dicognito shifts or keeps.
BASIC_PROFILE_EMPTY = frozenset({"PatientBirthDate", "PatientSex"})
PROFILE_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)


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


class _Anonymizers:
    """One dicognito ``Anonymizer`` per patient: all share one seed (so UIDs, names and IDs map
    the same everywhere), each with its own :class:`DateTimeAnonymizer` in front."""

    def __init__(self, salt: bytes) -> None:
        self.salt = salt
        self.seed = _digest(salt, "dicognito-seed", "")
        self.by_patient: dict[str, Anonymizer] = {}

    def __call__(self, patient_key: str) -> Anonymizer:
        if patient_key not in self.by_patient:
            anonymizer = Anonymizer(seed=self.seed)
            anonymizer.add_element_handler(
                DateTimeAnonymizer(date_offset_hours(self.salt, patient_key))
            )
            self.by_patient[patient_key] = anonymizer
        return self.by_patient[patient_key]


def _strip_basic_profile(ds: Dataset) -> None:
    """Private tags, overlay/curve data and the :data:`BASIC_PROFILE_REMOVE` attributes go (in
    nested sequences too); the :data:`BASIC_PROFILE_EMPTY` ones become empty."""
    ds.remove_private_tags()

    def visit(dataset: Dataset, elem: pydicom.DataElement) -> None:
        group = elem.tag.group
        if elem.keyword in BASIC_PROFILE_REMOVE:
            del dataset[elem.tag]
        elif 0x5000 <= group <= 0x501E and group % 2 == 0:  # curve data (retired)
            del dataset[elem.tag]
        elif 0x6000 <= group <= 0x601E and elem.tag.element in (0x3000, 0x4000):  # overlays
            del dataset[elem.tag]
        elif elem.keyword in BASIC_PROFILE_EMPTY:
            elem.value = None

    ds.walk(visit)


def _mark_deidentified(ds: Dataset, burned_in: bool) -> None:
    ds.PatientIdentityRemoved = "NO" if burned_in else "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    items = []
    for value, meaning in PROFILE_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items


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
    path = str(file.resolve())
    return {
        "id": pseudonymize(path, salt, "file"),
        "suffix": shareable_suffix(file),
        "reason": reason,
    }


def _read(file: Path) -> Dataset:
    return pydicom.dcmread(file, force=False)


def deidentify(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    salt: str | None = None,
    allow_burned_in: bool = False,
    progress: bool = True,
) -> DeidentifyResult:
    """Write de-identified copies of the DICOM files under ``sources`` to
    ``out_dir/<patient>/<study>/<series>/<instance>.dcm`` and the files set aside to
    ``out_dir/quarantine.csv``; see the module docstring for what is changed."""
    out = Path(out_dir)
    key = resolve_salt(out, salt)
    out_resolved = out.resolve()
    files = sorted({f.resolve() for f, _ in scan(sources)})
    files = [f for f in files if not f.is_relative_to(out_resolved)]  # never our own outputs
    anonymizers = _Anonymizers(key)
    used: dict[Path, set[str]] = defaultdict(set)
    written, quarantined = [], []
    for file in tqdm(files, desc="deidentify", unit="file", disable=not progress):
        try:
            ds = _read(file)
        except InvalidDicomError:
            quarantined.append(_quarantine_row(file, "not a DICOM file (no DICM marker)", key))
            continue
        except Exception as exc:  # pydicom raises many types on damaged files
            reason = f"unreadable DICOM file ({type(exc).__name__})"
            quarantined.append(_quarantine_row(file, reason, key))
            continue
        if not (ds.get("SOPClassUID") and ds.get("SOPInstanceUID")):
            reason = "DICOM file without SOPClassUID/SOPInstanceUID (damaged or not an instance)"
            quarantined.append(_quarantine_row(file, reason, key))
            continue
        burned_in = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
        if burned_in and not allow_burned_in:
            reason = "BurnedInAnnotation is YES (pixels may show identifying text); copy it with "
            quarantined.append(_quarantine_row(file, reason + "--allow-burned-in", key))
            continue
        folder_key = str(file.parent)
        patient_key = str(ds.get("PatientID", "") or "").strip() or folder_key
        folder = (
            out
            / pseudonymize(patient_key, key, "pat")
            / _pseudonym(ds, "StudyInstanceUID", "st", key, folder_key)
            / _pseudonym(ds, "SeriesInstanceUID", "se", key, folder_key)
        )
        try:
            _strip_basic_profile(ds)
            anonymizers(patient_key).anonymize(ds)
            _mark_deidentified(ds, burned_in)
        except Exception as exc:  # e.g. a date dicognito cannot parse
            reason = f"de-identification failed ({type(exc).__name__})"
            quarantined.append(_quarantine_row(file, reason, key))
            continue
        dest = folder / _instance_name(ds, used[folder])
        with atomic_path(dest) as tmp:
            ds.save_as(tmp)
        written.append(dest)
    quarantine = write_csv(quarantined, out / QUARANTINE_FILE, QUARANTINE_COLUMNS)
    return DeidentifyResult(written=written, quarantine=quarantine, quarantined=quarantined)
