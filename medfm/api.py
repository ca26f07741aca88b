"""The functions notebooks and scripts need, one import away: ``import medfm``.

Each is the library function behind a ``medfm`` command; the command-line tools call the same
code. Imports are deferred so that ``import medfm`` stays fast and loads no torch until a function
is called.

Example:
    >>> import medfm
    >>> result = medfm.ingest(["raw/"], "runs/ingest", labels="labels.csv")  # doctest: +SKIP
    >>> encoder_dir, _ = medfm.pretrain(medfm.load_config("configs/pretrain/mae_vit_tiny_2d.yaml",
    ...     [f"data.manifest={result.manifest}", "out_dir=runs/mae"]))      # doctest: +SKIP
    >>> metrics = medfm.evaluate(encoder_dir, result.manifest, "runs/eval")  # doctest: +SKIP
    >>> audit = medfm.audit([str(encoder_dir), "timm:vit_small_patch16_224"],
    ...     result.manifest, out_dir="runs/audit", weights={"timm:vit_small_patch16_224":
    ...     "vit_s16.safetensors"})                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from medfm.data.ingestion.ingest import IngestResult
    from medfm.features.encoders import EvalEncoder
    from medfm.tracking.base import Logger
    from medfm.train.engine import TrainResult


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults, then the YAML recipe at ``path``, then ``KEY=VALUE`` overrides; unknown keys fail
    with the nearest valid name.

    Example: ``cfg = medfm.load_config("configs/pretrain/ct_3d.yaml", ["train.max_steps=10"])``
    """
    from medfm.config import load_config as _load

    return _load(path, list(overrides))


def ingest(
    sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike, **options: Any
) -> IngestResult:
    """Scan DICOM / NIfTI / PNG / slide / MedMNIST sources into ``out_dir/manifest.csv`` with
    pseudonymous ids; corrupt files are quarantined with a reason (``medfm ingest``).

    Example: ``result = medfm.ingest(["raw/"], "runs/ingest", labels="labels.csv", salt="site")``
    """
    from medfm.data.ingestion.ingest import ingest as _ingest

    return _ingest(list(sources), out_dir, **options)


def pretrain(cfg: DictConfig, logger: Logger | None = None) -> tuple[Path, TrainResult]:
    """Self-supervised pre-training with the online monitors of ``train.monitor_every``
    (``medfm pretrain``); returns ``(encoder_dir, result)``.

    Example: ``encoder_dir, result = medfm.pretrain(medfm.load_config(None, ["data.path=x.npz"]))``
    """
    from medfm.monitor import make_monitor
    from medfm.train.pretrain import pretrain as _pretrain

    return _pretrain(cfg, logger, monitor=make_monitor)


def load_encoder(spec: str, **options: Any) -> EvalEncoder:
    """An encoder by spec: a run folder, ``random:ARCH`` or ``timm:NAME`` with ``weights=FILE``
    (local safetensors); ``.build()`` gives the model.

    Example: ``model = medfm.load_encoder("runs/mae").build()``
    """
    from medfm.config import load_config as _load
    from medfm.features.encoders import resolve_encoder

    data_cfg = options.pop("data_cfg", None) or _load(None, []).data
    return resolve_encoder(spec, data_cfg, **options)


def evaluate(
    encoder: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike, **options: Any
) -> dict:
    """Every head under every protocol, with baselines and bootstrap CIs (``medfm evaluate``);
    writes ``out_dir/metrics.json`` and returns it.

    Example: ``metrics = medfm.evaluate("runs/mae", "runs/ingest/manifest.csv", "runs/eval")``
    """
    from medfm.config import load_config as _load
    from medfm.evaluation.run import evaluate as _evaluate

    cfg = options.pop("cfg", None) or _load(None, [])
    return _evaluate(str(encoder), data, cfg, out_dir, **options)


def audit(
    encoders: Sequence[str], data: str | os.PathLike, out_dir: str | os.PathLike, **options: Any
) -> dict:
    """The robustness audit of one or more encoders across medical centers (``medfm
    robustness``): ``out_dir/robustness.json`` and the robustness card ``report.html``.

    Example: ``result = medfm.audit(["runs/mae"], "runs/ingest/manifest.csv", "runs/audit")``
    """
    from medfm.robustness.audit import audit_encoders

    return audit_encoders(list(encoders), data, out_dir, **options)
