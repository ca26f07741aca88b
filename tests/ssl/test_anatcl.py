"""AnatCL (medfm.ssl.anatcl): the descriptor kernels, the kernel-weighted loss against a loop
reference, standardisation, the config path and a few steps of the 3D recipe on an ingested
manifest whose descriptor columns come from the labels CSV (``ingest(label_columns=...)``).

Forward/backward with a gradient for every parameter (2D, 3D, unified) is in the parametrised
tests of test_objectives.py / test_objectives_3d.py, exact resume there too, and 1 vs 2 processes
in tests/train/test_multiprocess.py."""

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medfm.config import ConfigError, load_config
from medfm.data.ingestion.ingest import ingest
from medfm.data.ingestion.manifest import read_manifest
from medfm.models.backbones import create_backbone
from medfm.ssl.anatcl import AnatCL, anatcl_kwargs, descriptor_kernels, standardize_columns
from medfm.ssl.losses import kernel_weighted_info_nce, metadata_weighted_info_nce
from medfm.ssl.objectives import build_objective

RECIPE = Path(__file__).parents[2] / "configs" / "pretrain" / "anatcl_mri_3d.yaml"


def test_kernels_on_hand_computed_descriptors():
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    g = descriptor_kernels(y, y, sigma=1.0, variant="global")
    # mean squared differences: (0,1) 1/2, (0,2) 4/2, (1,2) 5/2; w = exp(-msd / 2)
    expected = torch.tensor(
        [
            [1.0, math.exp(-0.25), math.exp(-1.0)],
            [math.exp(-0.25), 1.0, math.exp(-1.25)],
            [math.exp(-1.0), math.exp(-1.25), 1.0],
        ]
    )
    torch.testing.assert_close(g, expected[None])
    local = descriptor_kernels(y, y, sigma=2.0, variant="local")
    assert local.shape == (2, 3, 3)
    # descriptor 0 differs by 1 between samples (0, 1) and (1, 2): exp(-1 / 8)
    torch.testing.assert_close(local[0, 0], torch.tensor([1.0, math.exp(-1 / 8), 1.0]))
    torch.testing.assert_close(local[1, 2], torch.tensor([math.exp(-0.5), math.exp(-0.5), 1.0]))
    # rows against other columns (a rank's samples against the global batch)
    torch.testing.assert_close(descriptor_kernels(y[1:2], y, 1.0), g[:, 1:2])


def _loop_reference(z1, z2, kernel, t):
    """The kernel-weighted InfoNCE written out anchor by anchor."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b, n = len(z1), 2 * len(z1)
    total = 0.0
    for a in range(n):
        others = [k for k in range(n) if k != a]
        sims = torch.stack([z[a] @ z[k] / t for k in others])
        log_p = sims - torch.logsumexp(sims, dim=0)
        w = torch.stack([kernel[a % b, k % b] for k in others])
        total += -(w / w.sum() * log_p).sum()
    return total / n


def test_kernel_weighted_loss_matches_the_loop_reference_and_y_aware_for_one_descriptor():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 6), torch.randn(5, 6)
    y = torch.randn(5, 3)
    for variant in ("global", "local"):
        kernels = descriptor_kernels(y, y, 0.7, variant)
        expected = sum(_loop_reference(z1, z2, k, 0.3) for k in kernels) / len(kernels)
        loss = kernel_weighted_info_nce(z1, z2, kernels, 0.3)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # one descriptor: both variants are the y-aware InfoNCE of the metadata objective
    age = torch.tensor([30.0, 42, 55, 71, 20])
    for variant in ("global", "local"):
        kernel = descriptor_kernels(age[:, None], age[:, None], 10.0, variant)
        loss = kernel_weighted_info_nce(z1, z2, kernel, 0.2)
        assert loss.item() == pytest.approx(
            metadata_weighted_info_nce(z1, z2, age, 0.2, 10.0).item()
        )
    with pytest.raises(ValueError, match="kernel must be"):
        kernel_weighted_info_nce(z1, z2, torch.ones(4, 5))


def _objective(*extra, model="vit_tiny_patch16_224"):
    cfg = load_config(
        None,
        [
            "model.depth=1",
            "data.image_size=16",
            f"model.name={model}",
            "ssl.objective=anatcl",
            *extra,
        ],
    )
    encoder = create_backbone(cfg.model, 16, 1)
    return build_objective(encoder, cfg.ssl, cfg.model.pooling)


def test_batch_standardisation_makes_the_loss_independent_of_units():
    torch.manual_seed(0)
    objective = _objective("ssl.meta_keys=[age,gm]", "ssl.anatcl_standardize=batch")
    assert isinstance(objective, AnatCL) and objective.standardize == "batch"
    images = torch.rand(4, 1, 16, 16)
    seeds = torch.arange(4)
    age, gm = torch.tensor([30.0, 42, 55, 71]), torch.tensor([0.6, 0.55, 0.5, 0.42])

    def loss(a, g):
        torch.manual_seed(1)
        with torch.no_grad():
            return objective({"image": images, "sample_seed": seeds, "age": a, "gm": g})["loss"]

    assert loss(age, gm).item() == pytest.approx(loss(age / 12 + 3, gm * 1000).item(), rel=1e-5)
    assert loss(age, gm).item() != pytest.approx(loss(age, gm.flip(0)).item(), rel=1e-3)
    standard = standardize_columns(torch.stack([age, gm], dim=1))
    torch.testing.assert_close(standard.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(standard.std(0, unbiased=False), torch.ones(2))
    assert torch.equal(standardize_columns(torch.ones(3, 1)), torch.zeros(3, 1))


def test_age_is_its_own_y_aware_term_weighted_against_the_anatomical_one():
    """L = L_anat(gm, wm) + w * L_age, each the loop reference with its own kernel, on the
    projections the objective itself embeds (the author's description of AnatCL's loss)."""
    torch.manual_seed(0)
    objective = _objective(
        "ssl.meta_keys=[gm,wm]",
        "ssl.anatcl_age_key=age",
        "ssl.anatcl_age_weight=0.5",
        "ssl.anatcl_standardize=batch",
        "ssl.anatcl_sigma=0.8",
    )
    assert objective.columns == ["gm", "wm", "age"] and objective.age_weight == 0.5
    age, gm = torch.tensor([30.0, 42, 55, 71]), torch.tensor([0.6, 0.55, 0.5, 0.42])
    wm = torch.tensor([0.40, 0.47, 0.41, 0.45])
    batch = {"image": torch.rand(4, 1, 16, 16), "sample_seed": torch.arange(4)}
    batch |= {"age": age, "gm": gm, "wm": wm}
    with torch.no_grad():
        out = objective(batch)
        z1, z2 = objective.embed_views(batch["image"], batch["sample_seed"])
    y = standardize_columns(torch.stack([gm, wm, age], dim=1))
    t = objective.temperature
    anat = _loop_reference(z1, z2, descriptor_kernels(y[:, :2], y[:, :2], 0.8)[0], t)
    age_term = _loop_reference(z1, z2, descriptor_kernels(y[:, 2:], y[:, 2:], 0.8)[0], t)
    assert out["loss_contrastive"].item() == pytest.approx(anat.item(), rel=1e-5)
    assert out["loss_age"].item() == pytest.approx(age_term.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((anat + 0.5 * age_term).item(), rel=1e-5)
    with pytest.raises(KeyError, match=r"batch\['age'\]"):
        objective({k: v for k, v in batch.items() if k != "age"})


def test_config_path_and_errors_name_the_key():
    assert anatcl_kwargs(load_config(None, ["ssl.meta_key=age"]).ssl)["meta_keys"] == ["age"]
    kwargs = anatcl_kwargs(
        load_config(None, ["ssl.meta_keys=[age,gm]", "ssl.anatcl_variant=local"]).ssl
    )
    assert kwargs == {
        "meta_keys": ["age", "gm"],
        "variant": "local",
        "sigma": 1.0,
        "standardize": "none",
        "age_key": None,
        "age_weight": 1.0,
    }
    with pytest.raises(ConfigError, match=r"ssl\.anatcl_age_key='age' must not be one of"):
        _objective("ssl.meta_keys=[age,gm]", "ssl.anatcl_age_key=age")
    with pytest.raises(ConfigError, match=r"ssl\.anatcl_age_weight=-1.0"):
        _objective("ssl.meta_keys=[gm]", "ssl.anatcl_age_key=age", "ssl.anatcl_age_weight=-1")
    with pytest.raises(ConfigError, match=r"ssl\.anatcl_variant='both'"):
        _objective("ssl.anatcl_variant=both")
    with pytest.raises(ConfigError, match=r"ssl\.anatcl_sigma"):
        _objective("ssl.anatcl_sigma=0")
    objective = _objective("ssl.meta_keys=[age,gm_volume]")
    with pytest.raises(KeyError, match=r"batch\['gm_volume'\]"):
        objective({"image": torch.rand(2, 1, 16, 16), "age": torch.tensor([1.0, 2.0])})


def _mri_dataset(root: Path, n: int = 8) -> Path:
    """``n`` small NIfTI volumes and a labels CSV with descriptor columns (and a text column)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / "raw" / f"sub-{i:02d}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        volume = rng.uniform(10, 200, (20, 20, 20)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
        rows.append(
            {
                "path": f"raw/{path.name}",
                "label": i % 2,
                "age": 20 + 7 * i,
                "gm_volume": round(0.62 - 0.01 * i, 3),
                "wm_volume": round(0.4 + 0.005 * i, 4),
                "site_note": f"scanner {i % 3}",
            }
        )
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return labels


SMALL = [
    "data.patch.size=[16,16,16]",
    "data.patch.samples_per_volume=2",
    "data.num_workers=0",
    "model.name=vit3d_tiny",
    "model.patch_size=8",
    "model.depth=1",
    "train.batch_size=4",
    "train.max_steps=3",
    "train.warmup_steps=1",
    "train.checkpoint_every=100",
    "train.progress=false",
    "tracking.enabled=false",
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("anatcl")
    labels = _mri_dataset(root / "data")
    return ingest(
        [root / "data" / "raw"],
        root / "ingest",
        labels=labels,
        label_columns=["age", "gm_volume", "wm_volume"],  # opt-in: nothing else is kept
        salt="s",
        progress=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [(), ("ssl.anatcl_variant=local", "ssl.anatcl_standardize=batch")],
    ids=["global_dataset", "local_batch"],
)
def test_recipe_trains_a_few_steps_on_descriptor_columns_from_ingest(manifest, tmp_path, extra):
    from medfm.train.pretrain import pretrain

    rows = read_manifest(manifest.manifest)
    assert {r["age"] for r in rows} == {str(20 + 7 * i) for i in range(8)}
    assert "site_note" not in rows[0]  # not asked for: not kept
    assert manifest.counts["labels_columns_kept"] == ["age", "gm_volume", "wm_volume"]
    cfg = load_config(
        RECIPE, [f"data.manifest={manifest.manifest}", f"out_dir={tmp_path}", *SMALL, *extra]
    )
    assert list(cfg.ssl.meta_keys) == ["gm_volume", "wm_volume"] and cfg.ssl.anatcl_age_key == "age"
    out, trained = pretrain(cfg)
    assert trained.steps == 3 and np.isfinite(trained.final_loss)
    assert (out / "encoder.safetensors").is_file()


@pytest.mark.slow
def test_missing_descriptor_column_is_named_and_metadata_reads_one_column(manifest, tmp_path):
    from medfm.train.pretrain import pretrain

    base = [f"data.manifest={manifest.manifest}", *SMALL]
    with pytest.raises(ConfigError, match=r"anatcl needs a numeric manifest column 'ct_mean'"):
        pretrain(
            load_config(RECIPE, [*base, f"out_dir={tmp_path / 'x'}", "ssl.meta_keys=[age,ct_mean]"])
        )
    metadata = ["ssl.objective=metadata", "ssl.meta_key=age", "ssl.meta_sigma=10"]
    _, trained = pretrain(load_config(RECIPE, [*base, f"out_dir={tmp_path / 'm'}", *metadata]))
    assert trained.steps == 3 and np.isfinite(trained.final_loss)
