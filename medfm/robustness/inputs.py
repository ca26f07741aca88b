"""What the robustness audit reads: embeddings with each sample's class, center and group.

Embeddings come from encoders run on a manifest -- every spec ``medfm evaluate`` accepts (a
``medfm pretrain`` out_dir, ``random:<dir or arch>``, ``timm:<name>`` with a local weights file),
resolved by :func:`medfm.features.encoders.resolve_encoder`, extracted by
:func:`medfm.features.extract.extract_features` through the feature cache
(:mod:`medfm.features.cache`, the same entries ``medfm evaluate`` writes) -- or from ``.npz``
files. The audit follows de Jong et al. 2025 ("Current Pathology Foundation Models are unrobust
to Medical Center Differences") and PathoROB (Kömen et al. 2025).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

Weights = Mapping[str, str | os.PathLike] | str | os.PathLike | None


@dataclasses.dataclass
class AuditData:
    """Embeddings ``(n, d)`` with the biological class, the center and optional groups."""

    embeddings: np.ndarray
    bio: np.ndarray
    center: np.ndarray
    groups: np.ndarray | None = None

    @classmethod
    def from_columns(
        cls, embeddings, columns: Mapping[str, Sequence], bio: str, center: str, group: str | None
    ) -> AuditData:
        """Keep rows with a class and a center; ``columns`` maps column names to values."""
        for name in (bio, center, *([group] if group else [])):
            if name not in columns:
                raise ValueError(f"column {name!r} not found; available: {sorted(columns)}")
        b, c = np.asarray(columns[bio]).astype(str), np.asarray(columns[center]).astype(str)
        keep = (b != "") & (c != "")
        g = np.asarray(columns[group]).astype(str)[keep] if group else None
        return cls(np.asarray(embeddings, dtype=np.float32)[keep], b[keep], c[keep], g)


def audit_data_from_npz(
    paths: Sequence[str | os.PathLike], bio: str, center: str, group: str | None
) -> dict[str, AuditData]:
    """``.npz`` files holding ``embeddings`` ``(n, d)`` and one array per column, by file stem."""
    out = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Embeddings file {path} does not exist")
        with np.load(path, allow_pickle=False) as npz:
            if "embeddings" not in npz.files:
                raise ValueError(f"{path} has no 'embeddings' array; it has {npz.files}")
            columns = {k: npz[k] for k in npz.files if k != "embeddings"}
            out[path.stem] = AuditData.from_columns(npz["embeddings"], columns, bio, center, group)
    return out


def weights_for(spec: str, weights: Weights) -> str | None:
    """The local weights file of ``spec``: ``weights[spec]`` from a mapping, or the single path
    for every ``timm:`` spec (other specs bring their own weights)."""
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        found = weights.get(spec)
        return None if found is None else str(found)
    return str(weights) if spec.startswith("timm:") else None


def encoder_name(spec: str) -> str:
    """The encoder's name in the results: a run folder's name (``random:`` kept), else the spec
    without a ``@FILE`` suffix (``timm:vit_small_patch16_224``, ``random:vit_tiny``); a
    ``models:/`` spec as written."""
    if spec.startswith("models:/"):  # a registered version: @ALIAS is part of the name
        return spec
    random_init = spec.startswith("random:")
    target = spec.removeprefix("random:")
    if target.startswith("timm:") or not Path(target).exists():
        return spec.partition("@")[0]
    folder = Path(target)
    folder = folder.parent if folder.suffix == ".safetensors" else folder
    return ("random:" if random_init else "") + folder.resolve().name


def audit_data_from_encoders(
    encoders: Sequence[str],
    manifest: str | os.PathLike,
    bio: str,
    center: str,
    group: str | None,
    seed: int = 0,
    progress: bool = True,
    *,
    weights: Weights = None,
    cfg: DictConfig | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, AuditData]:
    """Embed the manifest with every encoder spec; ``{name: AuditData}`` (see
    :func:`encoder_name`; a repeated name gets ``#2``, ``#3``...).

    ``cfg`` (default :func:`medfm.config.load_config` defaults) gives the ``data.*`` settings
    of architectures named by spec and the ``model.*`` of ``random:<arch>``; a medfm run
    brings its own. ``weights`` is one local file for ``timm:`` specs or ``{spec: file}``;
    ``cache_dir`` holds the feature cache (``None``: no cache).
    """
    from medfm.config import load_config
    from medfm.data.datasets import build_dataset
    from medfm.data.ingestion.manifest import read_manifest
    from medfm.data.transforms.preprocess import check_same_preprocess
    from medfm.features.encoders import check_encoder_spec, resolve_encoder
    from medfm.features.extract import encoder_features
    from medfm.train.pretrain import infer_channels

    for spec in encoders:
        check_encoder_spec(spec)  # fail before any image is read
    cfg = cfg if cfg is not None else load_config(None, [])
    rows = read_manifest(manifest)
    names = {key for row in rows for key in row}
    columns = {name: [row.get(name, "") for row in rows] for name in names}
    data_cfg = infer_channels(OmegaConf.merge(cfg, {"data": {"channels": None}}), rows).data
    out: dict[str, AuditData] = {}
    for spec in encoders:
        enc = resolve_encoder(
            spec, data_cfg, weights_for(spec, weights), image_size, seed, cfg.get("model")
        )
        check_same_preprocess(enc.cfg.data, cfg.data, enc.name)
        dataset = build_dataset(rows, enc.cfg.data, progress=progress)
        batch = int(cfg.eval.batch_size)
        features = encoder_features(enc, rows, dataset, cache_dir, progress, batch)
        name, n = encoder_name(spec), 1
        while name in out:
            n += 1
            name = f"{encoder_name(spec)}#{n}"
        out[name] = AuditData.from_columns(features, columns, bio, center, group)
    return out
