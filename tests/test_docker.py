"""``docker/compose.yaml`` is the team server the README describes: MLflow on PostgreSQL with a
MinIO artifact store, every image and package pinned, every service health-checked and started
only once what it needs is healthy. (Docker is not run here; tests/tracking/test_team_server.py
runs the same ``mlflow server`` on a real PostgreSQL.)"""

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).parents[1] / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_every_image_and_package_is_pinned():
    services = _compose()["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    for name, service in services.items():
        if "image" in service:
            image, _, tag = service["image"].partition(":")
            assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} unpinned"
    install = re.search(r"pip install (.*?)&&", services["mlflow"]["command"], re.DOTALL)
    packages = [p for p in install.group(1).split() if not p.startswith("-")]
    assert packages and all(re.fullmatch(r"[\w.-]+==[\w.]+", p) for p in packages), packages
    assert {p.split("==")[0] for p in packages} >= {"mlflow", "psycopg2-binary"}
    base = re.search(r"^FROM (\S+)", (DOCKER / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert re.search(r":\d+\.\d+\.\d+", base), base


def test_mlflow_stores_runs_in_postgres_and_artifacts_in_minio():
    services = _compose()["services"]
    command = " ".join(services["mlflow"]["command"].split())
    assert "--backend-store-uri postgresql+psycopg2://" in command and "@postgres:5432/" in command
    assert "--artifacts-destination s3://mlflow" in command
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    bucket = services["minio-bucket"]["entrypoint"]
    assert "mc mb --ignore-existing store/mlflow" in " ".join(bucket.split())


def test_services_are_health_checked_and_wait_for_what_they_need():
    services = _compose()["services"]
    for name in ("postgres", "minio", "mlflow"):
        check = services[name]["healthcheck"]
        assert check["test"] and check["retries"] >= 3, name
    needs = services["mlflow"]["depends_on"]
    assert needs["postgres"] == {"condition": "service_healthy"}
    assert needs["minio-bucket"] == {"condition": "service_completed_successfully"}
    assert services["minio-bucket"]["depends_on"]["minio"] == {"condition": "service_healthy"}
    assert services["demo"]["depends_on"]["mlflow"] == {"condition": "service_healthy"}
