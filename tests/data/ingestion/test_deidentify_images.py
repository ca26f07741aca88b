"""``medfm deidentify`` on NIfTI and PNG files: copies under pseudonymous names, without the free
text that names the patient, with the voxels and pixels unchanged.

Sources are nibabel's own ``anatomical.nii`` (with a description, the other free-text header fields
and a header extension naming the patient, once as .nii and once rescaled as .nii.gz) and a PNG
with a tEXt chunk holding the name, all in a folder named after the patient.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from PIL import Image, PngImagePlugin

from medfm.data.ingestion.deidentify import NIFTI_TEXT_FIELDS, deidentify
from medfm.data.ingestion.pseudonym import pseudonymize

SALT = "test-salt"
PATIENT_DIR = "DOE^JOHN_0012345"
NAMES = ("DOE^JOHN", "0012345")


def _named_nifti(path: Path, scaled: bool) -> None:
    img = nib.load(Path(data_path) / "anatomical.nii")
    img.header["descrip"] = b"DOE^JOHN 0012345 T1"
    img.header["aux_file"] = b"DOE^JOHN.txt"
    img.header["intent_name"] = b"DOE^JOHN"
    img.header["db_name"] = b"0012345"
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"patient DOE^JOHN, 0012345"))
    if scaled:  # rescaled voxels must keep their stored values and scaling
        img.header.set_slope_inter(2.0, -1.0)
    nib.save(img, path)


@pytest.fixture
def sources(tmp_path):
    folder = tmp_path / "src" / PATIENT_DIR
    folder.mkdir(parents=True)
    _named_nifti(folder / "DOE^JOHN_t1.nii", scaled=False)
    _named_nifti(folder / "DOE^JOHN_t1_scaled.nii.gz", scaled=True)
    rng = np.random.default_rng(0)
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", "DOE^JOHN 0012345")
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
        folder / "DOE^JOHN_photo.png", pnginfo=info
    )
    grey16 = rng.integers(0, 65536, (20, 16)).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "DOE^JOHN_tile16.png", pnginfo=info)
    return tmp_path / "src"


def _bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def test_nifti_and_png_copies_carry_no_name_and_the_same_voxels(sources, tmp_path):
    folder = sources / PATIENT_DIR
    originals = sorted(folder.iterdir())
    assert all(NAMES[0].encode() in _bytes(p) for p in originals)  # the sources do name him
    out_dir = tmp_path / "out"
    result = deidentify([sources], out_dir, salt=SALT, progress=False)
    assert result.quarantined == []
    key = SALT.encode()
    patient = pseudonymize(PATIENT_DIR, key, "pat")  # as `medfm ingest` names this folder
    copies = {
        src: out_dir / patient / (pseudonymize(str(src.resolve()), key, "img") + suffix)
        for src in originals
        for suffix in [".nii.gz" if src.name.endswith(".gz") else src.suffix]
    }
    assert sorted(result.written) == sorted(copies.values())
    for src, dest in copies.items():
        rel = str(dest.relative_to(out_dir))
        assert not [name for name in (*NAMES, "DOE", "JOHN") if name in rel], rel
        assert not [name for name in NAMES if name.encode() in _bytes(dest)], dest
        if ".nii" in src.name:
            _assert_same_nifti(src, dest)
        else:
            _assert_same_png(src, dest)


def _assert_same_nifti(src: Path, dest: Path) -> None:
    before, after = nib.load(src), nib.load(dest)
    for field in NIFTI_TEXT_FIELDS:
        assert after.header[field].item() == b"", field
    assert len(after.header.extensions) == 0
    assert after.get_data_dtype() == before.get_data_dtype()
    stored_before = np.asanyarray(before.dataobj.get_unscaled())
    np.testing.assert_array_equal(np.asanyarray(after.dataobj.get_unscaled()), stored_before)
    assert (after.dataobj.slope, after.dataobj.inter) == (
        before.dataobj.slope,
        before.dataobj.inter,
    )
    np.testing.assert_array_equal(after.get_fdata(), before.get_fdata())
    np.testing.assert_array_equal(after.affine, before.affine)


def _assert_same_png(src: Path, dest: Path) -> None:
    with Image.open(src) as before, Image.open(dest) as after:
        assert "Patient" in before.text and after.text == {}
        assert set(after.info) <= {"transparency", "dpi"}
        assert after.mode == before.mode and after.size == before.size
        np.testing.assert_array_equal(np.asarray(after), np.asarray(before))
