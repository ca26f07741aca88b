"""DICOM series: grouping, ordering, consistency checks, decoding, quarantine reasons."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medfm.data.ingestion.ingest import ingest
from medfm.data.sources.dicom_series import (
    check_series,
    is_dicom_file,
    load_series,
    order_slices,
    read_slice_header,
)
from medfm.data.sources.loading import load_path
from medfm.data.sources.readers import UnreadableFileError
from medfm.data.writers import write_dicom

pytestmark = pytest.mark.filterwarnings("ignore:.*nvImageCodec")
SERIES = "1.2.826.0.1.3680043.8.498.1"


def _slice(folder: Path, name: str, z: float, value: int, size=(6, 5), **extra) -> Path:
    image = np.full(size, value, dtype=np.uint8)
    image[0, 0] = 0  # mark the first row/column corner
    header = {
        "PatientID": "ZZPAT123",
        "PatientName": "ZZSECRET^NAME",
        "Modality": "CT",
        "SeriesInstanceUID": SERIES,
        "StudyInstanceUID": "1.2.3.4",
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "ImagePositionPatient": [0, 0, z],
        "InstanceNumber": int(z),
        "RescaleSlope": 1,
        "RescaleIntercept": -1024,
        **extra,
    }
    return write_dicom(image, folder / name, header, spacing=(0.5, 0.8))


def _volume(folder: Path, zs=(0.0, 2.0, 4.0, 6.0)) -> list[Path]:
    # file names deliberately out of anatomical order
    return [
        _slice(folder, f"f{i}.dcm", z, 10 * (k + 1))
        for i, (k, z) in zip([3, 1, 0, 2], enumerate(zs), strict=False)
    ]


def test_slices_ordered_by_position_and_decoded_in_units(tmp_path):
    _volume(tmp_path)
    headers = [read_slice_header(p) for p in sorted(tmp_path.glob("*.dcm"))]
    ordered = order_slices(headers)
    assert [h.position[2] for h in ordered] == [0.0, 2.0, 4.0, 6.0]
    check_series(ordered)
    volume = load_series([h.path for h in ordered])
    assert volume.shape == (5, 6, 4)  # x (columns), y (rows), z
    assert volume[1, 1, :].tolist() == [10 - 1024, 20 - 1024, 30 - 1024, 40 - 1024]
    assert volume[0, 0, 0] == -1024  # the marked corner, after the x-first transpose


def test_series_becomes_one_manifest_row_without_phi(tmp_path):
    _volume(tmp_path / "src" / "ct")
    result = ingest([tmp_path / "src"], tmp_path / "out", salt="s", progress=False)
    assert result.counts["seen"] == 4 and result.counts["accepted"] == 4
    (row,) = result.rows
    assert row["path"] == str((tmp_path / "src" / "ct").resolve())  # folder holds just this series
    assert (row["format"], row["modality"], row["shape"]) == ("dicom", "CT", "5x6x4")
    assert row["spacing"] == "0.8x0.5x2"
    assert row["orientation"] == "LPS"  # DICOM's identity direction cosines, in RAS codes
    assert row["series"].startswith("se-") and row["patient"].startswith("pat-")
    for name in ("manifest.csv", "quarantine.csv", "report.json"):
        text = (tmp_path / "out" / name).read_text()
        assert "ZZPAT123" not in text and "ZZSECRET" not in text and SERIES not in text
    loaded = load_path(row["path"])
    assert tuple(loaded.shape) == (1, 5, 6, 4) and loaded[0, 1, 1, 3].item() == 40 - 1024


def test_mixed_folder_keeps_series_apart(tmp_path):
    _volume(tmp_path / "src")
    _slice(tmp_path / "src", "other.dcm", 0.0, 99, SeriesInstanceUID="1.2.3.999")
    result = ingest([tmp_path / "src"], tmp_path / "out", salt="s", progress=False)
    shapes = sorted(r["shape"] for r in result.rows)
    assert shapes == ["5x6", "5x6x4"]
    volume_row = next(r for r in result.rows if r["shape"] == "5x6x4")
    assert volume_row["path"].count("|") == 3  # explicit ordered file list
    assert load_path(volume_row["path"]).shape[-1] == 4


@pytest.mark.parametrize(
    "make_bad,reason",
    [
        (lambda d: _slice(d, "gap.dcm", 12.0, 50), "gap in slice positions"),
        (lambda d: _slice(d, "big.dcm", 8.0, 50, size=(7, 5)), "different sizes"),
        (
            lambda d: _slice(d, "tilt.dcm", 8.0, 50, ImageOrientationPatient=[0, 1, 0, 0, 0, -1]),
            "different orientations",
        ),
    ],
)
def test_inconsistent_series_quarantined_whole(tmp_path, make_bad, reason):
    _volume(tmp_path / "src")
    make_bad(tmp_path / "src")
    result = ingest([tmp_path / "src"], tmp_path / "out", salt="s", progress=False)
    assert result.rows == []
    assert result.counts["rejected"] == 5 and result.counts["seen"] == 5
    assert all(reason in r for r in result.counts["rejected_by_reason"])


def test_bad_dicom_inputs_each_get_a_reason(tmp_path, quarantined_sources):
    src = tmp_path / "src"
    src.mkdir()
    _slice(src, "good.dcm", 0.0, 30, SeriesInstanceUID="1.2.3.5")
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "IMG0001")  # DICOM without a suffix
    (src / "README").write_text("export notes")  # non-DICOM file in a DICOM folder
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.SeriesInstanceUID = "1.2.3.6"
    ds.save_as(src / "nopixels.dcm")
    shutil.copy(get_testdata_file("JPEGLSNearLossless_16.dcm"), src / "jpegls.dcm")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    result = ingest([src], tmp_path / "out", salt="s", progress=False)
    quarantined = quarantined_sources(tmp_path / "out").items()
    reasons = {Path(path).name: r["reason"] for path, r in quarantined}
    assert reasons["README"] == "not a DICOM file (no DICM marker) and no known image suffix"
    assert reasons["nopixels.dcm"] == "DICOM file has no pixel data"
    assert "JPEG-LS" in reasons["jpegls.dcm"] and "pyjpegls" in reasons["jpegls.dcm"]
    assert sorted(r["shape"] for r in result.rows) == ["128x128", "5x6"]
    assert result.counts["seen"] == result.counts["accepted"] + result.counts["rejected"] == 5
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # sources untouched


def test_is_dicom_file(tmp_path):
    assert is_dicom_file(Path(get_testdata_file("CT_small.dcm")))
    (tmp_path / "x").write_bytes(b"\0" * 200)
    assert not is_dicom_file(tmp_path / "x")
    with pytest.raises(UnreadableFileError, match="empty file"):
        (tmp_path / "e.dcm").write_bytes(b"")
        read_slice_header(tmp_path / "e.dcm")


def _quarantine(out: Path) -> list[dict]:
    import csv

    with open(out / "quarantine.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_acquisition_confounders_become_manifest_columns(tmp_path):
    extra = {
        "Manufacturer": "ZZVendor",
        "ManufacturerModelName": "Scanner X",
        "KVP": 120,
        "SliceThickness": 2.0,
        "InstitutionName": "ZZ Secret Hospital",
    }
    for i, z in enumerate((0.0, 2.0, 4.0)):
        _slice(tmp_path / "src", f"s{i}.dcm", z, 20, **extra)
    result = ingest([tmp_path / "src"], tmp_path / "out", salt="s", progress=False)
    (row,) = result.rows
    assert (row["manufacturer"], row["scanner_model"], row["kvp"]) == (
        "ZZVendor",
        "Scanner X",
        "120",
    )
    assert row["slice_thickness"] == "1-3mm"
    assert row["institution"].startswith("c-")
    assert "ZZ Secret Hospital" not in (tmp_path / "out" / "manifest.csv").read_text()
