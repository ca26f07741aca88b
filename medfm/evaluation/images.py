"""The image heads of ``medfm evaluate``: ``finetune`` (per protocol and seed) and ``soup``
(uniform and greedy model soups of fine-tuned members, Wortsman et al., ICML 2022).

Fine-tuning is :func:`medfm.heads.finetune.fine_tune`; soups are :mod:`medfm.heads.soups`.
Runs are keyed by (protocol, fold, seed) and shared by both heads, and each run's folder is named
after everything that defines it, so the engine resumes an interrupted one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medfm.data.datasets import stack_images
from medfm.evaluation.protocols import Protocol
from medfm.evaluation.scoring import n_seeds, run_protocol, score_fold
from medfm.evaluation.tasks import EvalTask, Fold
from medfm.features.encoders import EvalEncoder
from medfm.heads.finetune import FineTuneClassifier, fine_tune
from medfm.heads.soups import greedy_soup, uniform_soup
from medfm.metrics.scores import auc


def image_rows(
    enc: EvalEncoder,
    dataset,
    task: EvalTask,
    heads: list[str],
    protocols: list[Protocol],
    cfg: DictConfig,
    out_dir: Path,
) -> tuple[dict, dict]:
    """``(metrics rows, ROC predictions)`` of the finetune head per protocol and seed, and of
    the soups of the full protocol's members; with ``eval.baselines`` the same rows again,
    prefixed ``random:``, for the encoder's random-init twin under the same fine-tuning budget
    and early stopping (so every table answers "does pre-training help fine-tuning?"). The twin
    trains without layer-wise LR decay: the decay protects pre-trained early layers, and a
    network trained from scratch has none to protect, so decaying them would only weaken the
    baseline."""
    if task.multilabel:
        raise ValueError("the finetune and soup heads need single-label classes")
    encoders = {"": (enc, cfg)}
    if bool(cfg.eval.baselines) and enc.twin is not None:
        encoders["random:"] = (enc.twin, OmegaConf.merge(cfg, {"finetune": {"layer_decay": 1.0}}))
    metrics: dict = {}
    roc: dict = {}
    for prefix, (encoder, run_cfg) in encoders.items():
        runner = FineTuner(encoder, dataset, task, run_cfg, out_dir / "finetune")
        more, more_roc = _rows_of(runner, heads, protocols, cfg)
        metrics.update({prefix + row: v for row, v in more.items()})
        roc.update({prefix + row: v for row, v in more_roc.items()})
    return metrics, roc


def _rows_of(runner: FineTuner, heads: list[str], protocols: list[Protocol], cfg: DictConfig):
    """The finetune and soup rows (and the full protocol's test predictions) of one encoder."""
    n_boot = int(cfg.eval.bootstrap)
    metrics: dict = {}
    roc: dict = {}
    if "finetune" in heads:
        for protocol in protocols:
            result, first = run_protocol(
                lambda fold, seed, p=protocol: runner.predict(p.name, fold, seed),
                runner.task,
                protocol,
                n_seeds("finetune", protocol, int(cfg.eval.seeds)),
                n_boot,
            )
            metrics.setdefault("finetune", {})[protocol.name] = result
            if protocol.name == "full":
                roc["finetune"] = first
    if "soup" in heads:
        soups, soup_roc = runner.soups(n_boot)
        metrics.update(soups)
        roc.update(soup_roc)
    return metrics, roc


class FineTuner:
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

    def run(self, protocol: str, fold: Fold, seed: int) -> tuple[FineTuneClassifier, float]:
        """The fine-tuned model of (protocol, fold, seed) and its best validation AUC."""
        key = (protocol, fold.held_out, seed)
        if key not in self.runs:
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
                self._folder(protocol, fold, seed),
            )
            self.runs[key] = (model, result.val_auc)
        return self.runs[key]

    def proba(self, model: FineTuneClassifier, idx: np.ndarray) -> np.ndarray:
        """Class probabilities of the images ``idx``, 256 at a time."""
        chunks = [
            model.predict_proba(stack_images(self.dataset, idx[i : i + 256]))
            for i in range(0, len(idx), 256)
        ]
        return np.concatenate(chunks)

    def predict(self, protocol: str, fold: Fold, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Test probabilities and classes of the (protocol, fold, seed) run."""
        model, _ = self.run(protocol, fold, seed)
        return self.proba(model, fold.test), self.task.classes

    def soups(self, n_boot: int) -> tuple[dict, dict]:
        """``soup_uniform``, ``soup_greedy`` and ``finetune_best`` (best member on val) of
        ``finetune.soup_size`` members fine-tuned on the full protocol with seeds 0, 1, ...:
        their metrics rows and their test predictions."""
        fold = self.task.folds(Protocol("full"), 0)[0]
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
        out, roc = {}, {}
        for name, state in (
            ("finetune_best", states[best]),
            ("soup_uniform", uniform_soup(states)),
            ("soup_greedy", greedy),
        ):
            model.load_state_dict(state)
            proba = self.proba(model, fold.test)
            report = score_fold(self.task, fold, proba, self.task.classes, n_boot)
            roc[name] = (self.task.labels[fold.test], proba, self.task.classes)
            out[name] = {"full": report | {"n_seeds": len(members), "val_auc": val_auc(state)}}
        out["soup_greedy"]["full"]["members_kept"] = len(kept)
        model.load_state_dict(states[0])
        return out, roc
