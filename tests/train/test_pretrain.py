"""Pre-training data path: preprocessing saved with the encoder, random 3D patches, DataLoader
workers that do not change the weights, and a cache that never needs the dataset in RAM."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from medfm.config import load_config
from medfm.data.transforms.preprocess import PreprocessError
from medfm.train.pretrain import pretrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """A MedMNIST-layout .npz of 3D volumes (x, y, slices) of different brightness."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("vol") / "volumes.npz"
    images = rng.integers(0, 255, size=(12, 20, 20, 12), dtype=np.uint8)
    labels = (np.arange(12) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez(
        path,
        train_images=images[:8],
        train_labels=labels[:8],
        val_images=images[8:10],
        val_labels=labels[8:10],
        test_images=images[10:],
        test_labels=labels[10:],
    )
    return path


def _cfg(volumes, out, *extra):
    return load_config(
        None,
        [
            f"data.path={volumes}",
            f"out_dir={out}",
            "model.name=vit3d_tiny",
            "model.depth=1",
            "model.patch_size=8",
            "data.preprocess=[{name: scale_range, a_min: 0, a_max: 255}]",
            "data.patch.size=[8,16,16]",
            "data.patch.samples_per_volume=2",
            "train.batch_size=4",
            "train.max_steps=4",
            "train.warmup_steps=1",
            "train.progress=false",
            "tracking.enabled=false",
            "ssl.decoder_dim=32",
            "ssl.decoder_depth=1",
            *extra,
        ],
    )


def test_workers_do_not_change_the_weights_and_config_keeps_the_steps(volumes, tmp_path):
    out0, _ = pretrain(_cfg(volumes, tmp_path / "w0", "data.num_workers=0"))
    out2, result = pretrain(_cfg(volumes, tmp_path / "w2", "data.num_workers=2"))
    a, b = (
        load_file(str(out0 / "encoder.safetensors")),
        load_file(str(out2 / "encoder.safetensors")),
    )
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert result.steps == 4
    saved = OmegaConf.load(out2 / "config.yaml")
    assert OmegaConf.to_container(saved.data.preprocess) == [
        {"name": "scale_range", "a_min": 0, "a_max": 255}
    ]
    assert (saved.data.image_size, saved.data.depth_size) == (16, 8)  # the patch is the input


def test_a_manifest_over_the_cache_budget_is_cached_on_disk(volumes, tmp_path):
    out, _ = pretrain(_cfg(volumes, tmp_path / "disk", "data.cache_budget_gb=0.000001"))
    assert len(list((out / "cache").glob("*.pt"))) == 8  # the 8 train volumes, preprocessed
    memory, _ = pretrain(_cfg(volumes, tmp_path / "mem", "data.cache=memory"))
    a, b = (
        load_file(str(out / "encoder.safetensors")),
        load_file(str(memory / "encoder.safetensors")),
    )
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_evaluation_applies_the_encoders_steps_and_rejects_others(volumes, tmp_path):
    from medfm.evaluation.run import evaluate

    out, _ = pretrain(_cfg(volumes, tmp_path / "enc"))
    cfg = load_config(None, ["eval.heads=[knn]", "eval.baselines=false", "eval.bootstrap=10"])
    metrics = evaluate(out, volumes, cfg, tmp_path / "eval", progress=False)
    assert 0.0 <= metrics["knn"]["full"]["test_auc"] <= 1.0
    bad = load_config(None, ["eval.heads=[knn]", "data.preprocess=[{name: zscore}]"])
    with pytest.raises(PreprocessError, match="was pre-trained with data.preprocess="):
        evaluate(out, volumes, bad, tmp_path / "eval2", progress=False)


def test_a_2d_image_in_a_3d_recipe_names_the_image(tmp_path):
    path = tmp_path / "flat.npz"
    images = np.zeros((4, 20, 20), dtype=np.uint8)
    labels = np.zeros((4, 1), dtype=np.uint8)
    np.savez(path, train_images=images, train_labels=labels)
    cfg = _cfg(path, tmp_path / "flat", "data.channels=1")
    with pytest.raises(
        Exception, match=r"image \d+ is 2D \(20, 20\) but data.patch.size=\[8, 16, 16\]"
    ):
        pretrain(cfg)


def test_shards_give_the_weights_of_the_manifest_and_resume_exactly(tmp_path, monkeypatch):
    from medfm.cli.main import main
    from medfm.data.ingestion.ingest import ingest
    from medfm.data.shards import ShardDataset
    from medfm.data.synthetic import SyntheticSpec, write_dataset

    labels = write_dataset(tmp_path / "d", SyntheticSpec(cases_per_center=4, images_per_case=2))
    manifest = ingest(
        [tmp_path / "d" / "raw"], tmp_path / "i", labels=labels, salt="s", progress=False
    ).manifest
    steps = [
        "data.preprocess=[{name: percentile}, {name: resize_to_model, size: 16}]",
        "data.image_size=16",
        "model.depth=1",
        "train.batch_size=4",
        "train.max_steps=6",
        "train.warmup_steps=1",
        "train.progress=false",
        "tracking.enabled=false",
        "train.checkpoint_every=3",
    ]
    data_steps = [s for s in steps if s.startswith("data.")]
    out = str(tmp_path / "shards")
    assert main(["shard", str(manifest), *data_steps, "--out", out, "--per-shard", "5"]) == 0
    shards = ShardDataset(tmp_path / "shards")
    assert len(list((tmp_path / "shards").glob("shard-*.tar"))) == -(-len(shards) // 5)
    from_manifest, _ = pretrain(
        load_config(None, [*steps, f"data.manifest={manifest}", f"out_dir={tmp_path / 'm'}"])
    )
    shard_cfg = [*steps[1:], f"data.shards={tmp_path / 'shards'}", f"out_dir={tmp_path / 's'}"]
    reads, original = [], ShardDataset.__getitem__

    def crashes_in_step_4(self, i):  # after the step-3 checkpoint, like a killed process
        reads.append(i)
        if len(reads) > 16:
            raise KeyboardInterrupt
        return original(self, i)

    monkeypatch.setattr(ShardDataset, "__getitem__", crashes_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain(load_config(None, shard_cfg))
    monkeypatch.setattr(ShardDataset, "__getitem__", original)
    from_shards, result = pretrain(load_config(None, [*shard_cfg, "data.num_workers=2"]))
    assert result.resumed_from == 3
    a = load_file(str(from_manifest / "encoder.safetensors"))
    b = load_file(str(from_shards / "encoder.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    saved = OmegaConf.load(from_shards / "config.yaml").data.preprocess
    assert [s["name"] for s in saved] == ["percentile", "resize_to_model"]


def test_shards_read_from_an_object_store_url_give_the_local_samples(tmp_path):
    """``medfm shard --out memory://...`` uploads the shards through fsspec (memory:// stands in
    for s3://), and reading them back by URL gives the samples of the local copy bit for bit."""
    import fsspec

    from medfm.data.shards import ShardDataset, write_shards

    rng = np.random.default_rng(1)
    rows = []
    for i in range(7):
        path = tmp_path / f"img{i}.npy"
        np.save(path, rng.integers(0, 255, size=(12, 12), dtype=np.uint8))
        rows.append({"id": f"p{i}", "path": str(path), "split": "train"})
    data = load_config(None, ["data.image_size=12", "data.preprocess=[{name: percentile}]"]).data
    write_shards(rows, data, tmp_path / "local", per_shard=3, progress=False)
    url = "memory://medfm-test/ct"
    assert write_shards(rows, data, url, per_shard=3, progress=False) == url
    stored = fsspec.filesystem("memory").ls(url, detail=False)
    assert sorted(p.rsplit("/", 1)[1] for p in stored) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
        "shards.json",
    ]
    local, remote = ShardDataset(tmp_path / "local"), ShardDataset(url)
    by_file_url = ShardDataset(f"file://{tmp_path / 'local'}")
    assert len(local) == len(remote) == len(by_file_url) == 7
    for i in (6, 0, 4):  # out of order: every read seeks its own member
        assert remote[i]["id"] == local[i]["id"] == f"p{i}"
        assert torch.equal(remote[i]["image"], local[i]["image"])
        assert torch.equal(by_file_url[i]["image"], local[i]["image"])
    with pytest.raises(FileNotFoundError, match="memory://medfm-test/none has no shards.json"):
        ShardDataset("memory://medfm-test/none")
