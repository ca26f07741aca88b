"""An encoder run folder as a registered MLflow model version (``medfm register``).

The version's model is an MLflow pyfunc (:class:`EncoderModel`) whose only artifact is the folder
``artifacts/encoder/`` holding ``encoder.safetensors`` and ``config.yaml``, exactly a
``medfm pretrain`` out_dir. ``mlflow.pyfunc.load_model("models:/NAME/VERSION").predict(batch)``
returns the pooled embeddings of a float32 batch ``(B, C, H, W)`` (``(B, C, D, H, W)`` in 3D), as
:func:`medfm.models.backbones.encode` gives them; the folder itself also loads with
:func:`medfm.models.encoder_io.load_encoder` as a torch module. Loading needs medfm installed.

Version tags say what the encoder is without naming a source path: ``medfm.model_name``,
``medfm.ssl_objective``, ``medfm.recipe_sha256`` (of the resolved ``config.yaml``), and
``medfm.data_sha256`` (of the training manifest file, with its file name in
``medfm.manifest_name``; without a manifest, of the ``data.path`` string); and in words, the recipe
(``medfm.image_size``, ``medfm.preprocess``, ``medfm.train_steps``, ``medfm.batch_size``) and the
data (``medfm.data_rows``, ``medfm.data_patients``, ``medfm.data_centers``,
``medfm.data_modalities``).

mlflow is imported here at module level; import this module lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from medfm.models.encoder_io import CONFIG, WEIGHTS, load_encoder_config
from medfm.tracking.spool import http_settings

log = logging.getLogger(__name__)
ARTIFACT = "encoder"  # the artifacts/ sub-folder of the model that holds the run folder
EXPERIMENT = "medfm-registry"
_REQUIREMENTS = ("torch", "timm", "safetensors", "omegaconf", "numpy")


class EncoderModel(mlflow.pyfunc.PythonModel):
    """A medfm encoder as an MLflow pyfunc: ``predict(batch)`` -> pooled ``(B, D)`` embeddings."""

    def load_context(self, context: Any) -> None:
        """Rebuild the backbone from the model's ``encoder`` artifact folder."""
        from medfm.models.encoder_io import load_encoder

        self.model, self.cfg = load_encoder(context.artifacts[ARTIFACT])
        self.pooling = str(self.cfg.model.get("pooling", "mean"))

    def predict(self, context, model_input, params=None):  # no hints: mlflow reads them
        """Float32 ``(B, C, H, W)`` / ``(B, C, D, H, W)`` batch -> ``(B, D)`` float32 embeddings."""
        import torch

        from medfm.models.backbones import encode

        batch = torch.from_numpy(np.ascontiguousarray(np.asarray(model_input, dtype=np.float32)))
        with torch.no_grad():
            return encode(self.model, batch, self.pooling).numpy().astype(np.float32)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encoder_tags(run_dir: str | os.PathLike) -> dict[str, str]:
    """The version tags of the encoder in ``run_dir`` (see the module docstring); no paths."""
    run_dir = Path(run_dir)
    cfg = load_encoder_config(run_dir)
    tags = {
        "medfm.model_name": str(cfg.model.name),
        "medfm.ssl_objective": str(cfg.get("ssl", {}).get("objective", "")),
        "medfm.recipe_sha256": _sha256_file(run_dir / CONFIG),
    }
    tags |= _recipe_tags(cfg)
    data = cfg.get("data", {})
    manifest = data.get("manifest")
    if manifest and Path(str(manifest)).is_file():
        tags["medfm.data_sha256"] = _sha256_file(Path(str(manifest)))
        tags["medfm.manifest_name"] = Path(str(manifest)).name
        tags |= _data_tags(Path(str(manifest)))
    elif data.get("path"):
        tags["medfm.data_sha256"] = hashlib.sha256(str(data.path).encode()).hexdigest()
    return tags


def _recipe_tags(cfg: Any) -> dict[str, str]:
    """The recipe in words: image size, preprocessing steps, training steps and batch."""
    data, train = cfg.get("data", {}), cfg.get("train", {})
    steps = [str(step.get("name")) for step in (data.get("preprocess") or [])]
    return {
        "medfm.image_size": str(data.get("image_size", "")),
        "medfm.preprocess": ",".join(steps) or "default",
        "medfm.train_steps": str(train.get("max_steps", "")),
        "medfm.batch_size": str(train.get("batch_size", "")),
    }


def _data_tags(manifest: Path) -> dict[str, str]:
    """The training data in words: rows, patients, centers and modalities of the manifest (its
    columns hold pseudonyms, never names or paths)."""
    import csv

    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    distinct = lambda column: sorted({r.get(column) or "" for r in rows} - {""})  # noqa: E731
    return {
        "medfm.data_rows": str(len(rows)),
        "medfm.data_patients": str(len(distinct("patient"))),
        "medfm.data_centers": str(len(distinct("center"))),
        "medfm.data_modalities": ",".join(distinct("modality")) or "unknown",
    }


def _signature(cfg: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size, channels = int(cfg.data.image_size), int(cfg.data.channels)
    depth = cfg.data.get("depth_size") if cfg.model.name.startswith(("vit3d", "unified")) else None
    shape = (-1, channels, *((int(depth),) if depth else ()), size, size)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
    )


def _pins() -> list[str]:
    pins = []
    for package in ("medfm", *_REQUIREMENTS):
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


@contextlib.contextmanager
def _using(tracking_uri: str | None) -> Iterator[None]:
    """Point mlflow's global tracking and registry URIs at ``tracking_uri`` for a while, with
    MLflow's own HTTP retries and timeout: a tracking logger's background sender shortens them
    (process-wide, under a lock) while it sends, and holding the same lock here keeps a slow
    registration from running with its 2 s timeout."""
    with http_settings(max_retries=7, timeout=120.0), _uris(tracking_uri):
        yield


@contextlib.contextmanager
def _uris(tracking_uri: str | None) -> Iterator[None]:
    if tracking_uri is None:
        yield
        return
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def register_encoder(
    run_dir: str | os.PathLike,
    name: str,
    tracking_uri: str | None = None,
    alias: str | None = None,
    experiment: str = EXPERIMENT,
    run_id: str | None = None,
) -> str:
    """Log the encoder of ``run_dir`` in an MLflow run and register it as model ``name``.

    The run is ``run_id`` (the training run, as ``tracking.register_as`` does) or a new run in
    ``experiment``. Returns the new version number (a string). ``tracking_uri`` (default:
    ``MLFLOW_TRACKING_URI``) serves as registry URI too; ``alias`` is moved to the new version.
    """
    run_dir = Path(run_dir)
    cfg = load_encoder_config(run_dir)  # FileNotFoundError unless weights + config are there
    tags = encoder_tags(run_dir)
    with _using(tracking_uri), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        folder = Path(tmp) / ARTIFACT
        folder.mkdir()
        for file in (WEIGHTS, CONFIG):
            shutil.copy2(run_dir / file, folder / file)
        if run_id is None:
            mlflow.set_experiment(experiment)
        else:  # start_run(run_id) refuses a run outside the process's active experiment
            mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)
        where = {"run_id": run_id} if run_id else {"run_name": f"register-{name}"}
        with mlflow.start_run(**where, tags=tags) as run:
            warnings.filterwarnings("ignore", "An input example was not provided")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=EncoderModel(),
                artifacts={ARTIFACT: str(folder)},
                signature=_signature(cfg),
                pip_requirements=_pins(),
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        client = MlflowClient()
        for key, value in {**tags, "medfm.run_id": run.info.run_id}.items():
            client.set_model_version_tag(name, version, key, value)
        if alias:
            client.set_registered_model_alias(name, alias, version)
    return version


def move_alias(name: str, alias: str, version: str, tracking_uri: str | None = None) -> None:
    """Point ``alias`` of registered model ``name`` at an existing ``version``."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.get_model_version(name, str(version))  # a clear MLflow error when it does not exist
    client.set_registered_model_alias(name, alias, str(version))


def register_trained(cfg: Any, out_dir: str | os.PathLike, logger: Any) -> str | None:
    """``tracking.register_as``: register the encoder that ``medfm pretrain`` just wrote as a
    version of that model, logged into the training run itself (``tracking.register_alias`` moved
    to it). Call it after ``logger.close()``. Registration cannot fail a finished training: when
    the server does not answer, a warning gives the ``medfm register`` command and None is
    returned; else the version."""
    name = cfg.tracking.get("register_as")
    if not name or logger.tracking_uri is None:
        return None
    alias = cfg.tracking.get("register_alias")
    try:
        return register_encoder(out_dir, name, logger.tracking_uri, alias, run_id=logger.run_id)
    except Exception as err:  # the server, not the encoder: it is saved either way
        command = f"medfm register {out_dir} --name {name}" + (f" --alias {alias}" if alias else "")
        log.warning("registering the encoder as %r failed (%s); later: %s", name, err, command)
        return None


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION`` -> ``(NAME, VERSION, None)``; ``models:/NAME@ALIAS`` ->
    ``(NAME, None, ALIAS)``; ValueError otherwise."""
    body = uri.removeprefix("models:/") if uri.startswith("models:/") else None
    if body:
        if "@" in body:
            name, _, alias = body.partition("@")
            if name and alias and "/" not in body:
                return name, None, alias
        else:
            name, _, version = body.rpartition("/")
            if name and version.isdigit():
                return name, version, None
    raise ValueError(f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")


def resolve_version(uri: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """``(NAME, VERSION)`` of a ``models:/`` URI, an alias resolved to the version it names now."""
    name, version, alias = parse_model_uri(uri)
    if version is None:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        version = str(client.get_model_version_by_alias(name, alias).version)
    return name, version


def default_cache_dir() -> Path:
    """``$MEDFM_MODEL_CACHE``, else ``~/.cache/medfm/models``: downloaded model versions."""
    env = os.environ.get("MEDFM_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "medfm" / "models"


def download_encoder(
    uri: str, cache_dir: str | os.PathLike | None = None, tracking_uri: str | None = None
) -> Path:
    """The run folder (``encoder.safetensors`` + ``config.yaml``) of a registered version.

    Downloaded once to ``cache_dir/NAME/VERSION`` (a version's files never change); an alias is
    resolved to its current version first.
    """
    name, version = resolve_version(uri, tracking_uri)
    target = Path(cache_dir or default_cache_dir()) / name / version
    folder = target / "artifacts" / ARTIFACT
    if (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file():
        return folder
    target.parent.mkdir(parents=True, exist_ok=True)
    with _using(tracking_uri):
        partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(partial)
            )
            if target.exists():
                shutil.rmtree(target)
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{uri}: model version has no {ARTIFACT}/{WEIGHTS} artifact")
    return folder


def _ri_tags(entry: Mapping[str, Any]) -> dict[str, str]:
    """``medfm.ri_*`` tags of one encoder's entry of ``robustness.json``: both variants, CIs."""
    tags = {"medfm.ri_k": str(entry["k"])}
    variants = (("robustness_index", "ratio"), ("robustness_index_normalized", "normalized"))
    for key, short in variants:
        tags[f"medfm.ri_{short}"] = str(entry[key])
        lo, hi = entry[f"{key}_ci95"]
        tags[f"medfm.ri_{short}_ci95"] = f"[{lo}, {hi}]"
    return tags


def attach_results(
    version_uri: str,
    robustness_json: str | os.PathLike,
    card_path: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    encoder: str | None = None,
) -> dict[str, str]:
    """Tag a registered version with its robustness indices and log its robustness card.

    The entry of ``robustness_json`` is ``encoder`` (default: ``version_uri``, else the only
    one); its ``medfm.ri_ratio`` / ``medfm.ri_normalized`` (with ``_ci95``) and ``medfm.ri_k``
    tags are set on the version, and ``card_path`` is logged under ``robustness/`` of the run that
    logged the version. Returns the tags set.
    """
    encoders = json.loads(Path(robustness_json).read_text())["encoders"]
    key = encoder or (version_uri if version_uri in encoders else None)
    if key is None:
        if len(encoders) != 1:
            raise ValueError(f"{robustness_json} has {len(encoders)} encoders; name one")
        key = next(iter(encoders))
    name, version = resolve_version(version_uri, tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    tags = _ri_tags(encoders[key])
    for tag, value in tags.items():
        client.set_model_version_tag(name, version, tag, value)
    if card_path is not None:
        run_id = client.get_model_version(name, version).run_id
        client.log_artifact(run_id, str(card_path), "robustness")
    return tags


def attach_model_versions(specs: Iterable[str], out_dir: str | os.PathLike) -> list[str]:
    """:func:`attach_results` of ``out_dir/robustness.json`` and ``report.html`` for every
    ``models:/`` spec among ``specs`` (``medfm robustness`` calls it after writing them).

    The files are written already, so a registry that does not answer costs a warning, not the
    audit. Returns the specs whose versions were tagged."""
    out_dir = Path(out_dir)
    card = out_dir / "report.html"
    done = []
    for spec in (str(s) for s in specs if str(s).startswith("models:/")):
        try:
            attach_results(spec, out_dir / "robustness.json", card if card.is_file() else None)
            done.append(spec)
        except Exception as err:  # the registry, not the results
            log.warning("could not attach the audit to %s (%s); results: %s", spec, err, out_dir)
    return done


def best_head(metrics: Mapping[str, Any], protocol: str = "full") -> tuple[str, Mapping] | None:
    """The encoder head (no baseline row) with the highest ``protocol`` test AUC in a
    ``metrics.json`` mapping, and its entry; None when no head has a finite one."""
    scored = [
        (row, entry[protocol])
        for row, entry in metrics.items()
        if ":" not in row and protocol in entry and np.isfinite(entry[protocol]["test_auc"])
    ]
    return max(scored, key=lambda item: item[1]["test_auc"]) if scored else None


def attach_evaluation(
    version_uri: str,
    metrics: Mapping[str, Any],
    out_dir: str | os.PathLike,
    tracking_uri: str | None = None,
) -> dict[str, str]:
    """Tag a registered version with its best head's test AUC (``medfm.best_head``,
    ``medfm.best_head_test_auc`` and ``_ci95``, protocol ``full``) and log ``metrics.json`` and
    ``metrics.md`` under ``evaluation/`` of the run that holds the version. Returns the tags set;
    a registry that does not answer costs a warning (the files are written already)."""
    best = best_head(metrics)
    tags: dict[str, str] = {}
    if best is not None:
        row, entry = best
        lo, hi = entry.get("test_auc_ci95", (float("nan"), float("nan")))
        tags = {
            "medfm.best_head": row,
            "medfm.best_head_test_auc": str(entry["test_auc"]),
            "medfm.best_head_test_auc_ci95": f"[{lo}, {hi}]",
        }
    try:
        name, version = resolve_version(version_uri, tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        for tag, value in tags.items():
            client.set_model_version_tag(name, version, tag, value)
        run_id = client.get_model_version(name, version).run_id
        for file in ("metrics.json", "metrics.md"):
            if (Path(out_dir) / file).is_file():
                client.log_artifact(run_id, str(Path(out_dir) / file), "evaluation")
    except Exception as err:  # the registry, not the results
        log.warning(
            "could not attach the evaluation to %s (%s); results: %s", version_uri, err, out_dir
        )
        return {}
    return tags
