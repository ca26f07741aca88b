"""Tests for medfm.data.writers: the three formats load back identically through MONAI."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage

from medfm.data.writers import write_dicom, write_nifti, write_png


@pytest.fixture
def image() -> np.ndarray:
    """A non-square uint8 array with a distinct value in every pixel and the full 0..255 range."""
    a = np.arange(12 * 8, dtype=np.int64).reshape(12, 8) * 3 % 256
    a[0, 0], a[-1, -1] = 0, 255
    return a.astype(np.uint8)


def load(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(LoadImage(image_only=True)(str(path)))


def write_all(image: np.ndarray, folder) -> list:
    return [
        write_png(image, folder / "img.png"),
        write_nifti(image, folder / "img.nii.gz"),
        write_dicom(image, folder / "img.dcm", {"Modality": "OT", "PatientID": "X1"}),
    ]


def test_three_formats_load_to_the_same_array(tmp_path, image):
    loaded = [load(p) for p in write_all(image, tmp_path)]
    for array in loaded:
        assert array.shape == (8, 12)  # MONAI returns 2D images x first
        np.testing.assert_array_equal(array, image.T)
    np.testing.assert_array_equal(loaded[0], loaded[1])
    np.testing.assert_array_equal(loaded[1], loaded[2])


def test_writers_return_final_paths_and_leave_no_temp_files(tmp_path, image):
    paths = write_all(image, tmp_path / "nested" / "dir")
    folder = tmp_path / "nested" / "dir"
    assert paths == [folder / "img.png", folder / "img.nii.gz", folder / "img.dcm"]
    assert sorted(p.name for p in folder.iterdir()) == ["img.dcm", "img.nii.gz", "img.png"]


def test_overwrite_replaces_content(tmp_path, image):
    write_png(image, tmp_path / "img.png")
    write_png(255 - image, tmp_path / "img.png")
    np.testing.assert_array_equal(load(tmp_path / "img.png"), (255 - image).T)
    assert [p.name for p in tmp_path.iterdir()] == ["img.png"]


def test_rgb_png_round_trips(tmp_path, image):
    rgb = np.stack([image, 255 - image, image // 2], axis=-1)
    loaded = load(write_png(rgb, tmp_path / "rgb.png"))
    assert loaded.shape == (8, 12, 3)
    np.testing.assert_array_equal(loaded, rgb.transpose(1, 0, 2))


def test_dicom_header_and_geometry(tmp_path, image):
    header = {
        "Modality": "CT",
        "Manufacturer": "Acme",
        "PatientID": "MRN1",
        "StudyInstanceUID": "1.2.3.4",
        "InstanceNumber": 2,
    }
    ds = pydicom.dcmread(write_dicom(image, tmp_path / "a.dcm", header, spacing=(0.5, 0.7)))
    assert (ds.Modality, ds.Manufacturer, ds.PatientID) == ("CT", "Acme", "MRN1")
    assert ds.StudyInstanceUID == "1.2.3.4"
    assert ds.InstanceNumber == 2
    assert (ds.Rows, ds.Columns) == (12, 8)
    assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.7]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    np.testing.assert_array_equal(ds.pixel_array, image)


def test_nifti_is_x_first_with_spacing(tmp_path, image):
    nii = nib.load(write_nifti(image, tmp_path / "a.nii.gz", spacing=(0.5, 0.7)))
    assert nii.shape == (8, 12)
    assert nii.get_data_dtype() == np.uint8
    np.testing.assert_allclose(nii.header.get_zooms(), (0.7, 0.5))
    np.testing.assert_array_equal(np.asarray(nii.dataobj), image.T)


def test_failed_write_leaves_no_temp_file(tmp_path):
    with pytest.raises(TypeError):
        write_png(np.zeros((4, 4, 5), dtype=np.uint8), tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []
