"""``medfm register`` / :mod:`medfm.features.model_registry` against a real ``mlflow server``."""

import hashlib
import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from medfm.config import load_config
from medfm.features import model_registry as registry
from medfm.models.backbones import create_backbone, encode
from medfm.models.encoder_io import load_encoder, save_encoder

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_run(tmp_path):
    """A tiny medfm run folder whose config names an existing training manifest."""
    manifest = tmp_path / "ingest" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "path,label,patient,center,modality\na.png,0,p-1,c1,US\nb.png,1,p-2,c1,US\n"
    )
    cfg = load_config(
        None,
        [
            "model.depth=1",
            "data.image_size=16",
            "model.patch_size=8",
            "data.channels=1",
            f"data.manifest={manifest}",
        ],
    )
    torch.manual_seed(0)
    model = create_backbone(cfg.model, cfg.data.image_size, cfg.data.channels)
    save_encoder(model, cfg, tmp_path / "run")
    return tmp_path / "run", manifest


@pytest.fixture
def server(mlflow_server, monkeypatch):
    """The server as tracking and registry URI of this test (restored afterwards)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_register_and_load_back_as_pyfunc(server, tiny_run, tmp_path):
    run_dir, manifest = tiny_run
    version = registry.register_encoder(run_dir, "tiny-enc", server, alias="champion")
    assert version == "1"

    batch = np.random.default_rng(0).normal(size=(3, 1, 16, 16)).astype(np.float32)
    model, cfg = load_encoder(run_dir)
    with torch.no_grad():
        expected = encode(model, torch.from_numpy(batch), cfg.model.pooling).numpy()
    loaded = mlflow.pyfunc.load_model(f"models:/tiny-enc/{version}")
    np.testing.assert_allclose(loaded.predict(batch), expected, atol=1e-5)
    by_alias = mlflow.pyfunc.load_model("models:/tiny-enc@champion")
    np.testing.assert_allclose(by_alias.predict(batch), expected, atol=1e-5)

    client = MlflowClient(server, registry_uri=server)
    assert client.get_model_version_by_alias("tiny-enc", "champion").version == version
    tags = client.get_model_version("tiny-enc", version).tags
    assert tags["medfm.model_name"] == cfg.model.name
    assert tags["medfm.ssl_objective"] == cfg.ssl.objective
    assert tags["medfm.data_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert tags["medfm.manifest_name"] == "manifest.csv"
    assert tags["medfm.data_rows"] == "2" and tags["medfm.data_patients"] == "2"
    assert tags["medfm.data_centers"] == "1" and tags["medfm.data_modalities"] == "US"
    assert tags["medfm.image_size"] == "16" and tags["medfm.preprocess"] == "default"
    recipe = hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()
    assert tags["medfm.recipe_sha256"] == recipe
    assert not any(str(tmp_path) in value for value in tags.values())  # no paths in tags

    # a second registration is version 2; the alias moves with it
    assert registry.register_encoder(run_dir, "tiny-enc", server, alias="champion") == "2"
    assert client.get_model_version_by_alias("tiny-enc", "champion").version == "2"


def test_models_uri_downloads_a_run_folder_and_attaches_results(server, tiny_run, tmp_path):
    run_dir, _ = tiny_run
    version = registry.register_encoder(run_dir, "tiny-dl", server, alias="prod")
    folder = registry.download_encoder("models:/tiny-dl@prod", tmp_path / "cache", server)
    assert folder.is_relative_to(tmp_path / "cache" / "tiny-dl" / version)
    assert (folder / "encoder.safetensors").read_bytes() == (
        run_dir / "encoder.safetensors"
    ).read_bytes()
    batch = torch.randn(2, 1, 16, 16)
    a, cfg = load_encoder(folder)
    b, _ = load_encoder(run_dir)
    with torch.no_grad():
        torch.testing.assert_close(encode(a, batch), encode(b, batch))

    report = tmp_path / "robustness.json"
    entry = {
        "k": 10,
        "robustness_index": 1.5,
        "robustness_index_ci95": [1.2, 1.9],
        "robustness_index_normalized": 0.6,
        "robustness_index_normalized_ci95": [0.55, 0.65],
    }
    report.write_text(json.dumps({"encoders": {"models:/tiny-dl@prod": entry}}))
    card = tmp_path / "report.html"
    card.write_text("<html>card</html>")
    registry.attach_model_versions(["models:/tiny-dl@prod", "timm:x"], tmp_path)

    client = MlflowClient(server, registry_uri=server)
    mv = client.get_model_version("tiny-dl", version)
    assert mv.tags["medfm.ri_ratio"] == "1.5"
    assert mv.tags["medfm.ri_ratio_ci95"] == "[1.2, 1.9]"
    assert mv.tags["medfm.ri_normalized"] == "0.6"
    assert mv.tags["medfm.ri_normalized_ci95"] == "[0.55, 0.65]"
    assert mv.tags["medfm.ri_k"] == "10"
    paths = [a.path for a in client.list_artifacts(mv.run_id, "robustness")]
    assert paths == ["robustness/report.html"]


def test_parse_model_uri():
    assert registry.parse_model_uri("models:/a/3") == ("a", "3", None)
    assert registry.parse_model_uri("models:/a@best") == ("a", None, "best")
    for bad in ("models:/a", "models:/a/x", "runs:/a/3", "models:/@x"):
        with pytest.raises(ValueError):
            registry.parse_model_uri(bad)


def test_register_cli(server, tiny_run, capsys):
    import argparse

    from medfm.cli import register_cmd

    parser = argparse.ArgumentParser()
    register_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["register", str(tiny_run[0]), "--name", "cli-enc", "--alias", "a"])
    assert args.run(args) == 0
    assert "models:/cli-enc/1 (alias a)" in capsys.readouterr().out
    client = MlflowClient(server, registry_uri=server)
    assert client.get_model_version_by_alias("cli-enc", "a").version == "1"
    args = parser.parse_args(["register", str(tiny_run[0]), "--name", "cli-enc", "--alias", "a"])
    assert args.run(args) == 0
    assert client.get_model_version_by_alias("cli-enc", "a").version == "2"
    args = parser.parse_args(["register", "--name", "cli-enc", "--alias", "a", "--version", "1"])
    assert args.run(args) == 0  # moved back, nothing registered
    assert client.get_model_version_by_alias("cli-enc", "a").version == "1"
    assert len(client.search_model_versions("name='cli-enc'")) == 2


def test_evaluate_and_audit_a_registered_version_tag_it(server, tiny_run, tmp_path, monkeypatch):
    """`medfm evaluate` and `medfm robustness` on models:/NAME@ALIAS, through the CLI."""
    from medfm.cli.main import main
    from medfm.data.ingestion.ingest import ingest
    from medfm.data.synthetic import SyntheticSpec, write_dataset

    monkeypatch.setenv("MEDFM_MODEL_CACHE", str(tmp_path / "cache"))
    labels = write_dataset(tmp_path / "d", SyntheticSpec(cases_per_center=4, images_per_case=2))
    data = ingest([tmp_path / "d" / "raw"], tmp_path / "i", labels=labels, salt="s", progress=False)
    version = registry.register_encoder(tiny_run[0], "tiny-audit", server, alias="best")
    spec = "models:/tiny-audit@best"
    common = ["--data", str(data.manifest), "--no-progress"]
    rob = ["robustness", "--encoder", spec, "--k", "5", "--bootstrap", "10", *common]
    assert main([*rob, "--out", str(tmp_path / "out")]) == 0
    entry = json.loads((tmp_path / "out" / "robustness.json").read_text())["encoders"][spec]
    assert entry["n"] == 24
    assert (tmp_path / "cache" / "tiny-audit" / version).is_dir()
    evaluation = ["evaluate", "--encoder", spec, "--heads", "linear,knn", *common]
    assert main([*evaluation, "--out", str(tmp_path / "eval"), "eval.bootstrap=20"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    best = max(("linear", "knn"), key=lambda head: metrics[head]["full"]["test_auc"])

    client = MlflowClient(server, registry_uri=server)
    mv = client.get_model_version("tiny-audit", version)
    assert float(mv.tags["medfm.ri_ratio"]) == pytest.approx(entry["robustness_index"])
    lo, hi = entry["robustness_index_normalized_ci95"]
    assert mv.tags["medfm.ri_normalized_ci95"] == f"[{lo}, {hi}]"
    assert mv.tags["medfm.best_head"] == best
    assert float(mv.tags["medfm.best_head_test_auc"]) == metrics[best]["full"]["test_auc"]
    lo, hi = metrics[best]["full"]["test_auc_ci95"]
    assert mv.tags["medfm.best_head_test_auc_ci95"] == f"[{lo}, {hi}]"
    paths = {a.path for a in client.list_artifacts(mv.run_id, "robustness")}
    assert paths == {"robustness/report.html"}
    paths = {a.path for a in client.list_artifacts(mv.run_id, "evaluation")}
    assert paths == {"evaluation/metrics.json", "evaluation/metrics.md"}


def test_best_head_skips_baselines_and_undefined_aucs():
    metrics = {
        "linear": {"full": {"test_auc": 0.7}},
        "knn": {"full": {"test_auc": float("nan")}},
        "random:linear": {"full": {"test_auc": 0.9}},
        "gda": {"fewshot:5": {"test_auc": 0.95}},
    }
    assert registry.best_head(metrics) == ("linear", {"test_auc": 0.7})
    assert registry.best_head({"knn": {"full": {"test_auc": float("nan")}}}) is None


def test_a_registry_that_does_not_answer_costs_a_warning(
    tmp_path, caplog, mlflow_servers, monkeypatch
):
    dead = f"http://127.0.0.1:{mlflow_servers.free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (tmp_path / "metrics.json").write_text("{}")
    assert registry.attach_evaluation("models:/x/1", {}, tmp_path, dead) == {}
    assert registry.attach_model_versions(["models:/x/1"], tmp_path) == []
    assert sum("could not attach" in r.getMessage() for r in caplog.records) == 2
