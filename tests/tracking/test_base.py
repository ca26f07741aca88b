from mlflow.tracking import MlflowClient

from medfm.tracking.base import Logger, NullLogger, local_tracking_uri, make_logger


def test_disabled_or_nonzero_rank_gives_null_logger(tmp_path, monkeypatch):
    assert isinstance(make_logger({"enabled": False}, tmp_path), NullLogger)
    monkeypatch.setenv("RANK", "1")
    assert isinstance(make_logger({"enabled": True}, tmp_path), NullLogger)
    assert list(tmp_path.iterdir()) == []  # nothing written by a null logger
    null = NullLogger()
    null.log_metrics({"a": 1.0})
    assert null.child("x") is null and isinstance(null, Logger)


def test_local_store_inside_out_dir_without_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    logger = make_logger({"enabled": True, "experiment": "local"}, tmp_path, run_name="r")
    assert logger.tracking_uri == local_tracking_uri(tmp_path)
    logger.log_metrics({"loss": 2.0, "nan_is_skipped": float("nan")}, step=1)
    artifact = tmp_path / "a.txt"
    artifact.write_text("x")
    logger.log_artifact(artifact)
    logger.close()
    client = MlflowClient(logger.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.data.metrics == {"loss": 2.0}
    assert (tmp_path / "mlflow.db").is_file()
    assert [a.path for a in client.list_artifacts(logger.run_id)] == ["a.txt"]
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
