"""Every recipe under configs/ (recursively) loads, and every pre-training recipe trains."""

from pathlib import Path

import numpy as np
import pytest
import torch

from medfm.config import load_config
from medfm.data.ingestion.ingest import ingest
from medfm.data.synthetic import SyntheticSpec, write_dataset
from medfm.models import load_encoder
from medfm.train.pretrain import pretrain

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
PRETRAIN = [p for p in CONFIGS if p.parent.name == "pretrain"]
REAL_VOLUMES = {
    "ct_3d",
    "mri_3d",
    "xray_2d",
    "uni4eye_mixed",
    "pathology_2d",
}  # trained on real images: test_recipes_real.py
REAL_VOLUMES |= {"anatcl_mri_3d"}  # on volumes with descriptor columns: tests/ssl/test_anatcl.py
TINY = [
    "model.depth=1",
    "train.max_steps=2",
    "train.batch_size=4",
    "train.progress=false",
    "tracking.enabled=false",
    "train.warmup_steps=1",
    "train.monitor_every=0",
    "ssl.n_local_crops=2",
]


def test_every_recipe_loads_and_says_how_to_launch():
    assert len(PRETRAIN) >= 6
    for path in CONFIGS:
        load_config(path)
        assert "medfm pretrain --config" in path.read_text(), path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    labels = write_dataset(root / "d2", SyntheticSpec(cases_per_center=4, images_per_case=1))
    manifest = ingest(
        [root / "d2" / "raw"], root / "i2", labels=labels, salt="s", progress=False
    ).manifest
    rng = np.random.default_rng(0)
    npz3d = root / "vol3d.npz"
    np.savez(
        npz3d,
        train_images=rng.integers(0, 255, (6, 28, 28, 28), dtype=np.uint8),
        train_labels=np.arange(6).reshape(-1, 1) % 2,
    )
    npz2d = root / "img2d.npz"
    np.savez(
        npz2d,
        train_images=rng.integers(0, 255, (6, 28, 28, 3), dtype=np.uint8),
        train_labels=np.arange(6).reshape(-1, 1) % 2,
    )
    return {"manifest": manifest, "npz3d": npz3d, "npz2d": npz2d}


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [p for p in PRETRAIN if p.stem not in REAL_VOLUMES],
    ids=[p.stem for p in PRETRAIN if p.stem not in REAL_VOLUMES],
)
def test_pretrain_recipe_runs(recipe, data, tmp_path):
    source = {
        "mae_vit_tiny_3d": f"data.path={data['npz3d']}",
        "medmnist_2d": f"data.path={data['npz2d']}",
    }.get(recipe.stem, f"data.manifest={data['manifest']}")
    cfg = load_config(recipe, [*TINY, source, f"out_dir={tmp_path}"])
    out, result = pretrain(cfg)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    model, enc_cfg = load_encoder(out)
    if recipe.stem == "mae_vit_tiny_3d":
        x = torch.rand(1, 1, 32, 32, 32)
    else:
        x = torch.rand(
            1, int(enc_cfg.data.channels), enc_cfg.data.image_size, enc_cfg.data.image_size
        )
    assert torch.isfinite(model.forward_features(x)).all()
    if recipe.stem == "medmnist_2d":
        assert enc_cfg.data.channels == 3  # found from the RGB file
