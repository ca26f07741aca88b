"""The whole downstream evaluation of one encoder (``medfm evaluate``); helpers in
:mod:`medfm.evaluation.suite`, fine-tuning in :mod:`medfm.heads.finetune`, soups in
:mod:`medfm.heads.soups`.

Example (a notebook)::

    from medfm.config import load_config
    from medfm.evaluation.run import evaluate
    cfg = load_config(None, ["eval.heads=[linear,knn]", "eval.protocols=[full,fewshot:5]"])
    metrics = evaluate("runs/demo/pretrain", "breastmnist.npz", cfg, "runs/eval")
    metrics["linear"]["fewshot:5"]["test_auc"]
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medfm.data.datasets import build_dataset, stack_images
from medfm.data.transforms.preprocess import check_same_preprocess
from medfm.evaluation import suite as S
from medfm.evaluation.tasks import EvalTask, Fold, load_eval_rows
from medfm.features.encoders import EvalEncoder, check_encoder_spec, resolve_encoder
from medfm.heads.finetune import FineTuneClassifier, fine_tune
from medfm.heads.soups import greedy_soup, uniform_soup
from medfm.metrics.scores import auc
from medfm.tracking.base import Logger, NullLogger
from medfm.train.pretrain import infer_channels


def _data_cfg(rows: list[dict], cfg: DictConfig) -> DictConfig:
    """``data.*`` for architectures given by name, channels found from the first image."""
    return infer_channels(OmegaConf.merge(cfg, {"data": {"channels": None}}), rows).data


def evaluate(
    encoder: str | os.PathLike | EvalEncoder,
    data: str | os.PathLike,
    cfg: DictConfig,
    out_dir: str | os.PathLike,
    logger: Logger | None = None,
    *,
    weights: str | None = None,
    image_size: int | None = None,
    pooling: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Every head in ``eval.heads`` under every protocol in ``eval.protocols``, over
    ``eval.seeds``, with the random-init and raw-pixel baselines; writes ``out_dir/metrics.json``,
    ``metrics.md`` and plots and returns ``{head: {protocol: metrics}}``."""
    if isinstance(encoder, os.PathLike):
        encoder = str(encoder)
    if isinstance(encoder, str):
        check_encoder_spec(encoder)
    logger, out_dir = logger or NullLogger(), S.ensure_dir(out_dir)
    rows = load_eval_rows(data)
    task = EvalTask.from_rows(rows)
    enc = (
        encoder
        if isinstance(encoder, EvalEncoder)
        else resolve_encoder(
            encoder, _data_cfg(rows, cfg), weights, image_size, int(cfg.seed), cfg.model
        )
    )
    check_same_preprocess(enc.cfg.data, cfg.data, enc.name)
    if pooling:
        enc.cfg.model.pooling = pooling
    heads = [str(h) for h in cfg.eval.heads]
    S.check_heads(heads)
    protocols = S.protocols_of(cfg)
    dataset = build_dataset(rows, enc.cfg.data, progress=progress)
    cache = Path(cache_dir) if cache_dir else out_dir / "feature_cache"
    sources = {"": S.cached_encoder_features(enc, rows, dataset, cache, progress)}
    if cfg.eval.baselines and enc.twin is not None:
        if enc.twin.cfg.model.pooling != enc.cfg.model.pooling:
            enc.twin.cfg.model.pooling = enc.cfg.model.pooling
        sources["random:"] = S.cached_encoder_features(enc.twin, rows, dataset, cache, progress)
    pixels = S.pixel_features(dataset) if cfg.eval.baselines else None
    if pixels is not None:
        sources["pixels:"] = pixels
    logger.log_params(
        {
            "encoder": enc.name,
            "data": str(data),
            "heads": ",".join(heads),
            "protocols": ",".join(p.name for p in protocols),
            "seeds": int(cfg.eval.seeds),
            "pooling": str(enc.cfg.model.pooling),
        }
    )
    metrics, roc = _feature_rows(sources, heads, protocols, task, cfg, progress)
    if any(h in heads for h in S.IMAGE_HEADS):
        _image_rows(enc, dataset, task, heads, protocols, cfg, out_dir, metrics, roc)
    S.log_nested(metrics, logger)
    S.write_outputs(metrics, roc, out_dir, f"{enc.name} on {Path(data).name}", logger)
    return metrics


def _feature_rows(sources, heads, protocols, task, cfg, progress):
    metrics, roc = {}, {}
    todo = [
        (prefix, h)
        for prefix in sources
        for h in heads
        if h in S.FEATURE_HEADS and (prefix != "pixels:" or h == "linear")
    ]
    bar = S.progress_bar(len(todo) * len(protocols), progress)
    n_boot = int(cfg.eval.bootstrap)
    sources = {k: np.asarray(v, dtype=np.float64) for k, v in sources.items()}
    for prefix, head in todo:
        X = sources[prefix]
        for protocol in protocols:
            seeds = S.n_seeds(head, protocol, int(cfg.eval.seeds))
            result, first = S.run_protocol(
                lambda fold, seed, h=head, X=X: S.fit_predict(h, X, task, fold, cfg, seed),
                task,
                protocol,
                seeds,
                n_boot,
            )
            metrics.setdefault(f"{prefix}{head}", {})[protocol.name] = result
            if protocol.name == "full" and not task.multilabel:
                roc[f"{prefix}{head}"] = first
            bar.update()
    bar.close()
    return metrics, roc


def _image_rows(enc, dataset, task, heads, protocols, cfg, out_dir, metrics, roc) -> None:
    """The finetune head per protocol and seed, and the soups of the full protocol's members."""
    if task.multilabel:
        raise ValueError("the finetune and soup heads need single-label classes")
    runner = _FineTuner(enc, dataset, task, cfg, out_dir / "finetune")
    n_boot = int(cfg.eval.bootstrap)
    if "finetune" in heads:
        for protocol in protocols:
            seeds = S.n_seeds("finetune", protocol, int(cfg.eval.seeds))
            result, first = S.run_protocol(
                lambda fold, seed, p=protocol: runner.predict(p.name, fold, seed),
                task,
                protocol,
                seeds,
                n_boot,
            )
            metrics.setdefault("finetune", {})[protocol.name] = result
            if protocol.name == "full":
                roc["finetune"] = first
    if "soup" in heads:
        metrics.update(runner.soups(n_boot))


class _FineTuner:
    """Fine-tuning runs keyed by (protocol, fold, seed), shared by the finetune and soup heads."""

    def __init__(self, enc: EvalEncoder, dataset, task: EvalTask, cfg: DictConfig, root: Path):
        self.enc, self.dataset, self.task, self.cfg, self.root = enc, dataset, task, cfg, root
        self.runs: dict[tuple, tuple[FineTuneClassifier, float]] = {}

    def _folder(self, protocol: str, fold: Fold, seed: int) -> Path:
        """Named after everything that defines the run (the engine resumes from that folder)."""
        parts = [
            self.enc.key,
            OmegaConf.to_yaml(self.cfg.finetune),
            str(self.task.classes),
            fold.train.tobytes().hex(),
            fold.val.tobytes().hex(),
        ]
        digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
        where = fold.held_out or "all"
        return self.root / f"{protocol.replace(':', '_')}-{where}-seed{seed}-{digest}"

    def run(self, protocol: str, fold: Fold, seed: int):
        key = (protocol, fold.held_out, seed)
        if key not in self.runs:
            folder = self._folder(protocol, fold, seed)
            model, result = fine_tune(
                self.enc.build,
                self.dataset,
                self.task.labels,
                self.task.classes,
                fold.train,
                fold.val,
                self.cfg.finetune,
                str(self.enc.cfg.model.pooling),
                seed,
                folder,
            )
            self.runs[key] = (model, result.val_auc)
        return self.runs[key]

    def proba(self, model: FineTuneClassifier, idx: np.ndarray) -> np.ndarray:
        chunks = [
            model.predict_proba(stack_images(self.dataset, idx[i : i + 256]))
            for i in range(0, len(idx), 256)
        ]
        return np.concatenate(chunks)

    def predict(self, protocol: str, fold: Fold, seed: int):
        model, _ = self.run(protocol, fold, seed)
        return self.proba(model, fold.test), self.task.classes

    def soups(self, n_boot: int) -> dict:
        """``soup_uniform``, ``soup_greedy`` and ``finetune_best`` (best member on val) of
        ``finetune.soup_size`` members fine-tuned on the full protocol with seeds 0, 1, ..."""
        fold = self.task.folds(S.Protocol("full"), 0)[0]
        if len(np.unique(self.task.labels[fold.val])) < 2:
            raise ValueError(
                "the soup head chooses members on the val split, which needs two or more "
                "classes; add a val split to the data or drop soup from --heads"
            )
        members = [self.run("full", fold, s) for s in range(int(self.cfg.finetune.soup_size))]
        states = [{k: v.clone() for k, v in m.state_dict().items()} for m, _ in members]
        model = members[0][0]
        y_val = self.task.labels[fold.val]

        def val_auc(state) -> float:
            model.load_state_dict(state)
            return auc(y_val, self.proba(model, fold.val), self.task.classes)

        best = int(np.nanargmax([v for _, v in members]))
        greedy, kept = greedy_soup(states, val_auc)
        out = {}
        for name, state in (
            ("finetune_best", states[best]),
            ("soup_uniform", uniform_soup(states)),
            ("soup_greedy", greedy),
        ):
            model.load_state_dict(state)
            report = S.score_fold(
                self.task, fold, self.proba(model, fold.test), self.task.classes, n_boot
            )
            out[name] = {"full": report | {"n_seeds": len(members), "val_auc": val_auc(state)}}
        out["soup_greedy"]["full"]["members_kept"] = len(kept)
        model.load_state_dict(states[0])
        return out
