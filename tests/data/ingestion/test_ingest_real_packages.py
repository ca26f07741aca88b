"""Real files shipped inside packages: pydicom-data's multi-frame MR, nilearn's MNI template."""

import shutil
from pathlib import Path

import pytest

from medfm.data.ingestion.ingest import ingest
from medfm.data.sources.loading import load_path

pytestmark = pytest.mark.filterwarnings("ignore:.*nvImageCodec")


def test_pydicom_data_multiframe_mr_becomes_one_volume(tmp_path):
    pytest.importorskip("data_store", reason="pydicom-data is in the [dev] extra")
    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file("emri_small.dcm"), src / "emri_small.dcm")
    result = ingest([src], tmp_path / "out", salt="s", progress=False)
    (row,) = result.rows
    assert (row["modality"], row["shape"], row["format"]) == ("MR", "64x64x10", "dicom")
    assert tuple(load_path(row["path"]).shape) == (1, 64, 64, 10)


def test_nilearn_mni_template_ingested_with_geometry(tmp_path):
    datasets = pytest.importorskip("nilearn.datasets", reason="nilearn is in the [dev] extra")
    src = tmp_path / "src"
    src.mkdir()
    datasets.load_mni152_template(resolution=2).to_filename(src / "mni152.nii.gz")
    result = ingest([src], tmp_path / "out", salt="s", progress=False)
    (row,) = result.rows
    assert (row["shape"], row["spacing"], row["orientation"]) == ("99x117x95", "2x2x2", "RAS")
    assert Path(row["path"]).name == "mni152.nii.gz"
