"""End to end: ``medfm evaluate`` on a small MedMNIST-format file and on a manifest with centers
and patients: every head, protocols, baselines, outputs, feature cache and nested MLflow runs on
a real ``mlflow server``; encoder resolution (medfm run, random:, timm: with a local file)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from medfm.cli.main import main
from medfm.config import load_config
from medfm.evaluation.run import evaluate
from medfm.features.encoders import resolve_encoder
from medfm.train.checkpoint import load_checkpoint
from medfm.train.pretrain import pretrain

pytestmark = pytest.mark.slow


def _images(n, rng):
    """Class 1 has a bright square in the middle; centers add their own brightness offset."""
    labels = np.arange(n) % 2
    images = rng.integers(0, 120, size=(n, 28, 28)).astype(np.uint8)
    images[labels == 1, 9:19, 9:19] += 120
    return images, labels[:, None]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A MedMNIST-format .npz, a manifest over it with 3 centers and 2 images per patient, and a
    tiny encoder pre-trained on it for 3 steps."""
    root = tmp_path_factory.mktemp("eval_e2e")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 72), ("val", 24), ("test", 36)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _images(n, rng)
    npz = root / "tiny.npz"
    np.savez(npz, **arrays)
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "split", "patient", "center"])
        writer.writeheader()
        for split in ("train", "val", "test"):
            for i, label in enumerate(arrays[f"{split}_labels"][:, 0]):
                writer.writerow(
                    {
                        "path": f"{npz}#{split}/{i}",
                        "label": str(label),
                        "split": split,
                        "patient": f"{split}-{i // 4 * 2 + i % 2}",
                        "center": f"c{i % 3}",
                    }
                )
    cfg = load_config(
        "configs/pretrain/medmnist_2d.yaml",
        [
            f"data.path={npz}",
            f"out_dir={root / 'enc'}",
            "model.depth=1",
            "train.max_steps=3",
            "train.batch_size=16",
            "train.monitor_every=0",
            "train.progress=false",
            "tracking.enabled=false",
        ],
    )
    pretrain(cfg)
    return {"npz": npz, "manifest": manifest, "encoder": root / "enc", "root": root}


def _cfg(*extra):
    return load_config(
        None,
        [
            "eval.bootstrap=30",
            "finetune.steps=6",
            "finetune.eval_every=3",
            "finetune.batch_size=16",
            "finetune.soup_size=2",
            *extra,
        ],
    )


def test_every_head_and_protocol_with_baselines_on_a_medmnist_file(small, tmp_path):
    cfg = _cfg(
        "eval.heads=[linear,knn,gda,prototype,mlp,finetune,soup]",
        "eval.protocols=[full,fewshot:2,fraction:0.5]",
        "eval.seeds=2",
    )
    metrics = evaluate(str(small["encoder"]), small["npz"], cfg, tmp_path, progress=False)
    heads = ["linear", "knn", "gda", "prototype", "mlp"]
    image_heads = ["finetune", "finetune_best", "soup_uniform", "soup_greedy"]
    expected = set(heads + image_heads) | {f"random:{h}" for h in heads + image_heads}
    assert set(metrics) == expected | {"pixels:linear"}
    # the random-init twin is fine-tuned under the same budget: its own runs, one per seed
    runs = sorted(p.name for p in (tmp_path / "finetune").iterdir())
    assert len(runs) == 2 * len({r.rsplit("-", 1)[0] for r in runs})
    for row in heads + image_heads:  # every row with a twin gets its gain and a paired CI
        full, twin = metrics[row]["full"], metrics[f"random:{row}"]["full"]
        assert full["gain_vs_random"] == pytest.approx(full["test_auc"] - twin["test_auc"])
        lo, hi = full["gain_vs_random_ci95"]
        assert lo <= hi
        assert "gain_vs_random" not in metrics[f"random:{row}"]["full"]
    for head in heads + ["finetune"]:
        assert set(metrics[head]) == {"full", "fewshot:2", "fraction:0.5"}
        full = metrics[head]["full"]
        lo, hi = full["test_auc_ci95"]
        assert 0.0 <= lo <= full["test_auc"] <= hi <= 1.0
        for key in ("test_acc", "test_bacc", "test_f1", "test_ece"):
            assert 0.0 <= full[key] <= 1.0
        assert metrics[head]["fewshot:2"]["n_seeds"] == 2
    assert metrics["linear"]["full"]["n_seeds"] == 1  # deterministic head, full labels
    assert metrics["mlp"]["full"]["n_seeds"] == 2
    assert metrics["pixels:linear"]["full"]["test_auc"] > 0.9  # the bright square is linear
    assert metrics["soup_greedy"]["full"]["members_kept"] in (1, 2)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["linear"]["full"]["test_auc"] == pytest.approx(
        metrics["linear"]["full"]["test_auc"]
    )
    table = (tmp_path / "metrics.md").read_text()
    assert "| linear | fewshot:2 |" in table and "| pixels:linear | full |" in table
    assert "## Gain over random initialisation" in table and "| finetune | " in table
    for png in ("roc_curves.png", "label_efficiency.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_loco_and_per_center_metrics_on_a_manifest_logged_to_an_mlflow_server(
    small, tmp_path, mlflow_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--encoder",
            str(small["encoder"]),
            "--data",
            str(small["manifest"]),
            "--out",
            str(out),
            "--heads",
            "linear,knn",
            "--protocol",
            "full",
            "--protocol",
            "loco",
            "--no-progress",
            "eval.bootstrap=30",
            "tracking.experiment=eval-e2e",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["linear"]["full"]["per_center"]) == {"c0", "c1", "c2"}
    loco = metrics["linear"]["loco"]
    assert set(loco["per_center"]) == {"c0", "c1", "c2"}
    assert loco["test_auc"] == pytest.approx(
        np.mean([v["test_auc"] for v in loco["per_center"].values()])
    )
    assert loco["n_folds"] == 3 and loco["n_seeds"] == 1
    assert (out / "per_center_full.png").is_file() and (out / "per_center_loco.png").is_file()
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("eval-e2e")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and parent[0].data.params["encoder"] == str(small["encoder"])
    # linear, knn, random:linear, random:knn, pixels:linear x full, loco
    assert len(children) == 10
    child = next(r for r in children if r.data.params == {"head": "linear", "protocol": "full"})
    assert child.data.metrics["test_auc"] == pytest.approx(metrics["linear"]["full"]["test_auc"])
    assert {a.path for a in client.list_artifacts(parent[0].info.run_id, "evaluation")} >= {
        "evaluation/metrics.json",
        "evaluation/metrics.md",
    }


def test_feature_cache_is_reused_and_random_twin_matches_random_spec(small, tmp_path, nested_close):
    cfg = _cfg("eval.heads=[linear]", "eval.baselines=false")
    cache = tmp_path / "cache"
    first = evaluate(
        str(small["encoder"]), small["npz"], cfg, tmp_path / "a", cache_dir=cache, progress=False
    )
    entries = sorted(cache.iterdir())
    again = evaluate(
        str(small["encoder"]), small["npz"], cfg, tmp_path / "b", cache_dir=cache, progress=False
    )
    assert sorted(cache.iterdir()) == entries and len(entries) == 1
    nested_close(again["linear"]["full"], first["linear"]["full"])
    cfg_b = _cfg("eval.heads=[linear]")
    with_base = evaluate(str(small["encoder"]), small["npz"], cfg_b, tmp_path / "c", progress=False)
    alone = evaluate(
        f"random:{small['encoder']}", small["npz"], cfg, tmp_path / "d", progress=False
    )
    assert alone["linear"]["full"]["test_auc"] == pytest.approx(
        with_base["random:linear"]["full"]["test_auc"]
    )


def test_timm_encoder_from_a_local_weights_file(tmp_path):
    source = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, in_chans=1
    )
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    data_cfg = load_config(None, []).data
    enc = resolve_encoder(f"timm:vit_tiny_patch16_224@{weights}", data_cfg, image_size=32)
    x = torch.rand(2, 1, 32, 32)
    source.eval()
    torch.testing.assert_close(enc.build().forward_features(x), source.forward_features(x))
    assert enc.twin is not None and enc.twin.key != enc.key
    with pytest.raises(ValueError, match="needs local weights"):
        resolve_encoder("timm:vit_tiny_patch16_224", data_cfg)
    with pytest.raises(FileNotFoundError, match="No encoder artifact"):
        resolve_encoder(str(tmp_path / "nowhere"), data_cfg)
    arch = resolve_encoder("random:vit_tiny_patch16_224", data_cfg)
    assert arch.twin is None and arch.build().patch_embed.img_size == (32, 32)


def test_three_dimensional_volumes_from_a_medmnist_3d_file(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 16), ("val", 8), ("test", 12)):
        labels = np.arange(n) % 2
        volumes = rng.integers(0, 100, size=(n, 28, 28, 28)).astype(np.uint8)
        volumes[labels == 1, 8:20, 8:20, 8:20] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = volumes, labels[:, None]
    npz = tmp_path / "tiny3d.npz"
    np.savez(npz, **arrays)
    cfg = _cfg(
        "eval.heads=[linear,gda]", "data.image_size=16", "model.depth=1", "model.patch_size=8"
    )
    metrics = evaluate("random:vit3d_tiny", npz, cfg, tmp_path / "out", progress=False)
    assert set(metrics) == {"linear", "gda", "pixels:linear"}  # a random: encoder has no twin
    assert metrics["pixels:linear"]["full"]["test_auc"] > 0.9
    assert 0.0 <= metrics["linear"]["full"]["test_auc"] <= 1.0


def test_results_are_written_before_anything_is_logged(small, tmp_path):
    """A tracking call that fails after the work is done cannot cost the results: metrics.json
    and metrics.md are on disk before the first metric or artifact is logged."""
    from medfm.tracking.base import NullLogger

    out = tmp_path / "eval"

    class FailingLogger(NullLogger):
        def log_metrics(self, metrics, step=None):
            assert (out / "metrics.json").is_file() and (out / "metrics.md").is_file()
            raise ConnectionError("tracking server gone")

        def log_artifact(self, path, artifact_path=None):
            assert (out / "metrics.json").is_file()

    cfg = _cfg("eval.heads=[linear]", "eval.baselines=false")
    with pytest.raises(ConnectionError, match="tracking server gone"):
        evaluate(str(small["encoder"]), small["npz"], cfg, out, FailingLogger(), progress=False)
    written = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= written["linear"]["full"]["test_auc"] <= 1.0


def test_dr_tune_is_reported_next_to_finetune_under_the_same_budget(small, tmp_path):
    cfg = _cfg("eval.heads=[finetune,dr_tune]", "finetune.dr_tune_queue=32")
    metrics = evaluate(str(small["encoder"]), small["npz"], cfg, tmp_path, progress=False)
    # no random:dr_tune: DR-Tune regularises toward pre-trained features a twin does not have
    assert set(metrics) == {"finetune", "random:finetune", "dr_tune"}
    full = metrics["dr_tune"]["full"]
    lo, hi = full["test_auc_ci95"]
    assert 0.0 <= lo <= full["test_auc"] <= hi <= 1.0 and full["n_seeds"] == 1
    assert "gain_vs_random" not in full and "gain_vs_random" in metrics["finetune"]["full"]
    runs = {p.name: load_checkpoint(p / "checkpoint.pt") for p in (tmp_path / "finetune").iterdir()}
    assert len(runs) == 3  # finetune, its random twin, dr_tune: one folder each
    with_queues = [n for n, s in runs.items() if "dr_tune.pre_queue" in s["model"]]
    assert len(with_queues) == 1
    assert {s["step"] for s in runs.values()} == {6}  # the same budget
    assert "| dr_tune | full |" in (tmp_path / "metrics.md").read_text()


def test_plain_fine_tuning_keeps_its_run_folders_whatever_the_dr_tune_keys():
    """The digest of a run without a regulariser is the one it had before the regulariser's
    keys existed, so interrupted runs still resume; DR-Tune runs get their own folders."""
    import hashlib
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from medfm.config import DEFAULTS
    from medfm.evaluation.images import FineTuner
    from medfm.evaluation.tasks import Fold

    task = SimpleNamespace(classes=np.array(["0", "1"]))
    fold = Fold(np.arange(4), np.arange(4, 6), np.arange(6, 8))

    def folder(*overrides):
        runner = FineTuner(SimpleNamespace(key="enc"), None, task, _cfg(*overrides), Path("r"))
        return runner._folder("fewshot:5", fold, 0)

    old_keys = {
        k: v
        for k, v in DEFAULTS["finetune"].items()
        if k != "regularizer" and not k.startswith("dr_tune_")
    }
    old_keys.update(steps=6, eval_every=3, batch_size=16, soup_size=2)
    parts = ["enc", OmegaConf.to_yaml(OmegaConf.create(old_keys)), str(task.classes)]
    parts += [fold.train.tobytes().hex(), fold.val.tobytes().hex()]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    assert folder() == Path("r") / f"fewshot_5-all-seed0-{digest}"
    assert folder("finetune.dr_tune_weight=3.0") == folder()
    assert folder("finetune.regularizer=dr_tune") != folder()
