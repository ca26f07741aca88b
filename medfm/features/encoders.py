"""What ``medfm evaluate --encoder ENC`` names, turned into a model and the data settings it needs.

``ENC`` is one of

* a medfm encoder: a ``medfm pretrain`` out_dir or its ``encoder.safetensors``;
* ``random:<run dir>`` (that architecture at random initialisation) or ``random:<arch>`` (a timm
  ViT name or ``vit3d_*`` / ``unified_*``, built as ``medfm pretrain`` would build it);
* ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``: a version registered by ``medfm register``
  on the MLflow server of ``MLFLOW_TRACKING_URI``, downloaded once to
  :func:`medfm.features.model_registry.default_cache_dir`;
* ``timm:<name>`` with weights from a local file (``--weights FILE`` or ``timm:<name>@FILE``);
  nothing is ever downloaded. Its images are resized to the model's default input size unless
  ``data.image_size`` is given.

Every encoder comes with its random-init twin (the baseline each table includes) and a cache key
that changes when the weights file changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medfm.config import DEFAULTS
from medfm.models.backbones import create_backbone, load_local_weights
from medfm.models.encoder_io import CONFIG, WEIGHTS, load_encoder


@dataclasses.dataclass
class EvalEncoder:
    """A model factory (fresh weights on every call) and the data/model settings it expects."""

    name: str  # as the user wrote it
    build: Callable[[], nn.Module]
    cfg: DictConfig  # data.* and model.pooling at least
    key: str  # identity of the weights, for the feature cache
    twin: EvalEncoder | None = None  # random-init twin (None for a random: encoder itself)


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _is_run(path: str) -> bool:
    p = Path(path)
    folder = p.parent if p.suffix == ".safetensors" else p
    return (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file()


def _run_dir(path: str) -> Path:
    p = Path(path)
    return p.parent if p.suffix == ".safetensors" else p


def _from_run(spec: str, path: str, random_init: bool, seed: int) -> EvalEncoder:
    folder = _run_dir(path)
    _, cfg = load_encoder(folder, random_init=True)

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return load_encoder(folder, random_init=random_init)[0]

    weights = "random" if random_init else _file_key(folder / WEIGHTS)
    key = _digest(weights, _file_key(folder / CONFIG), seed)
    return EvalEncoder(spec, build, cfg, key)


def _from_arch(
    spec: str, arch: str, data_cfg: DictConfig, seed: int, model_cfg: DictConfig | None
) -> EvalEncoder:
    model = model_cfg if model_cfg is not None else OmegaConf.create(DEFAULTS["model"])
    cfg = OmegaConf.merge({"model": model}, {"data": data_cfg, "model": {"name": arch}})

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return create_backbone(
            cfg.model, cfg.data.image_size, cfg.data.channels, cfg.data.get("depth_size")
        )

    build()  # fail now, with create_backbone's message, on an unknown name
    return EvalEncoder(spec, build, cfg, _digest("arch", arch, seed, cfg.model))


def _timm_cfg(name: str, data_cfg: DictConfig, image_size: int | None) -> DictConfig:
    """The data settings of a timm model: its default input size unless ``image_size``."""
    default = timm.models.get_pretrained_cfg(name)
    size = image_size or (default.input_size[-1] if default is not None else 224)
    cfg = OmegaConf.create({"model": {"name": name, "pooling": "mean"}, "data": data_cfg})
    cfg.data.image_size = int(size)
    return cfg


def _from_timm(
    spec: str,
    name: str,
    weights: str | None,
    data_cfg: DictConfig,
    image_size: int | None,
    seed: int,
    random_init: bool,
) -> EvalEncoder:
    if name not in timm.list_models():
        raise ValueError(f"timm:{name}: no timm model of that name; see timm.list_models()")
    if not random_init and not weights:
        raise ValueError(
            f"timm:{name} needs local weights: --weights FILE or timm:{name}@FILE (nothing is "
            f"downloaded); use random:{name} for the random-init architecture"
        )
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"timm:{name}: weights file {weights} does not exist")
    cfg = _timm_cfg(name, data_cfg, image_size)

    def build() -> nn.Module:
        torch.manual_seed(seed)
        kwargs = {"num_classes": 0, "in_chans": int(cfg.data.channels)}
        try:  # transformers take the input size; convolutional networks do not need it
            model = timm.create_model(name, img_size=int(cfg.data.image_size), **kwargs)
        except TypeError:
            model = timm.create_model(name, **kwargs)
        if not random_init:
            load_local_weights(model, weights)
        return model.eval()

    key = _digest("timm", name, "random" if random_init else _file_key(Path(weights)), seed, cfg)
    return EvalEncoder(spec, build, cfg, key)


def check_encoder_spec(spec: str) -> None:
    """Fail fast (before any data is read) on a path that is no encoder artifact."""
    if spec.startswith("models:/"):  # a registered MLflow model version (medfm register)
        from medfm.features.model_registry import parse_model_uri

        parse_model_uri(spec)
        return
    if not spec.startswith(("timm:", "random:")) and not _is_run(spec):
        raise FileNotFoundError(
            f"No encoder artifact at --encoder {spec}: expected a `medfm pretrain` out_dir (with "
            f"{WEIGHTS} and {CONFIG}) or its encoder.safetensors, random:<run dir or arch>, or "
            "timm:<name>"
        )


def resolve_encoder(
    spec: str,
    data_cfg: DictConfig,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    seed: int = 0,
    model_cfg: DictConfig | None = None,
) -> EvalEncoder:
    """The :class:`EvalEncoder` named by ``spec`` (see the module docstring), with its twin.

    ``data_cfg`` (``data.*``, channels known) and ``model_cfg`` (``model.*``: patch size, depth,
    stem, pooling; default :data:`~medfm.config.DEFAULTS`) serve architectures given by name; a
    medfm run brings its own.
    """
    weights = str(weights) if weights else None
    if spec.startswith("timm:"):
        name, _, at = spec.removeprefix("timm:").partition("@")
        weights = at or weights
        enc = _from_timm(spec, name, weights, data_cfg, image_size, seed, False)
        enc.twin = _from_timm(f"random:{name}", name, None, data_cfg, image_size, seed, True)
        return enc
    if spec.startswith("random:"):
        target = spec.removeprefix("random:")
        if _is_run(target):
            return _with_size(_from_run(spec, target, True, seed), image_size)
        if target.startswith("timm:"):
            return _from_timm(spec, target[5:], None, data_cfg, image_size, seed, True)
        return _from_arch(spec, target, _sized(data_cfg, image_size), seed, model_cfg)
    check_encoder_spec(spec)
    path = spec
    if spec.startswith("models:/"):  # downloaded once to a cache folder, then a run folder
        from medfm.features.model_registry import download_encoder

        path = str(download_encoder(spec))
    enc = _with_size(_from_run(spec, path, False, seed), image_size)
    enc.twin = _with_size(_from_run(f"random:{spec}", path, True, seed), image_size)
    return enc


def _sized(data_cfg: DictConfig, image_size: int | None) -> DictConfig:
    data_cfg = data_cfg.copy()
    if image_size:
        data_cfg.image_size = int(image_size)
    return data_cfg


def _with_size(enc: EvalEncoder, image_size: int | None) -> EvalEncoder:
    """A medfm run is evaluated at the image size it was pre-trained at."""
    if image_size and int(image_size) != int(enc.cfg.data.image_size):
        raise ValueError(
            f"{enc.name} was pre-trained at data.image_size={enc.cfg.data.image_size}; "
            "evaluate it at that size (drop --image-size)"
        )
    return enc
