"""Online monitors during pre-training: kNN accuracy and robustness index, best checkpoint."""

import json

import pytest
import torch

from medfm.api import pretrain
from medfm.config import load_config
from medfm.data.ingestion.ingest import ingest
from medfm.data.synthetic import SyntheticSpec, write_dataset
from medfm.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("mon")
    labels = write_dataset(root / "d", SyntheticSpec(cases_per_center=8, images_per_case=2))
    return ingest([root / "d" / "raw"], root / "i", labels=labels, salt="s", progress=False)


def test_monitors_are_logged_and_best_checkpoint_kept(manifest, tmp_path):
    cfg = load_config(
        None,
        [
            f"data.manifest={manifest.manifest}",
            f"out_dir={tmp_path}",
            "model.depth=1",
            "train.max_steps=4",
            "train.batch_size=8",
            "train.monitor_every=2",
            "train.progress=false",
            "tracking.enabled=false",
            "robustness.k=3",
        ],
    )
    _, result = pretrain(cfg)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    monitors = [r for r in records if "monitor/knn_acc" in r]
    assert [r["step"] for r in monitors] == [2, 4]
    for r in monitors:
        assert 0.0 <= r["monitor/knn_acc"] <= 1.0
        # three centers in the val split; few val patients per class, so it may be 0
        assert 0.0 <= r["monitor/robustness_index"] < float("inf")
    best = max(monitors, key=lambda r: (r["monitor/knn_acc"], -r["step"]))
    assert result.best == {
        "metric": "knn_acc",
        "value": best["monitor/knn_acc"],
        "step": best["step"],
    }
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["step"] == best["step"] and "model" in saved
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
