"""The image heads of ``medfm evaluate``: ``finetune`` (per protocol and seed), ``soup``
(uniform and greedy model soups of fine-tuned members, Wortsman et al., ICML 2022) and
``dr_tune`` (fine-tuning with DR-Tune's distribution regularisation, Zhou et al., ICCV 2023).

Fine-tuning is :func:`medfm.heads.finetune.fine_tune`; soups are :mod:`medfm.heads.soups`;
DR-Tune is the same fine-tuning with ``finetune.regularizer=dr_tune``
(:mod:`medfm.heads.dr_tune`), so it runs under exactly the budget, schedule, augmentation and
early stopping of the ``finetune`` row next to it. Runs are keyed by (protocol, fold, seed) and
shared by finetune and soup, and each run's folder is named after everything that defines it,
so the engine resumes an interrupted one.
"""

from __future__ import annotations

import hashlib
import re
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
    """``(metrics rows, ROC predictions)`` of the finetune head per protocol and seed, of the
    soups of the full protocol's members and of the dr_tune head per protocol and seed; with
    ``eval.baselines`` the finetune and soup rows again, prefixed ``random:``, for the
    encoder's random-init twin under the same fine-tuning budget and early stopping (so every
    table answers "does pre-training help fine-tuning?"). The twin trains without layer-wise LR
    decay: the decay protects pre-trained early layers, and a network trained from scratch has
    none to protect, so decaying them would only weaken the baseline. The twin never uses
    DR-Tune either, and there is no ``random:dr_tune`` row: DR-Tune regularises toward the
    frozen *pre-trained* features, which a random-init encoder does not have."""
    if task.multilabel:
        raise ValueError("the finetune, dr_tune and soup heads need single-label classes")
    encoders = {"": (enc, cfg)}
    if bool(cfg.eval.baselines) and enc.twin is not None:
        twin_cfg = {"finetune": {"layer_decay": 1.0, "regularizer": "none"}}
        encoders["random:"] = (enc.twin, OmegaConf.merge(cfg, twin_cfg))
    metrics: dict = {}
    roc: dict = {}
    for prefix, (encoder, run_cfg) in encoders.items():
        runner = FineTuner(encoder, dataset, task, run_cfg, out_dir / "finetune")
        more, more_roc = _rows_of(runner, heads, protocols, cfg)
        metrics.update({prefix + row: v for row, v in more.items()})
        roc.update({prefix + row: v for row, v in more_roc.items()})
    if "dr_tune" in heads:
        dr_cfg = OmegaConf.merge(cfg, {"finetune": {"regularizer": "dr_tune"}})
        runner = FineTuner(enc, dataset, task, dr_cfg, out_dir / "finetune")
        more, more_roc = _protocol_rows(runner, "dr_tune", protocols, cfg)
        metrics.update(more)
        roc.update(more_roc)
    return metrics, roc


def _protocol_rows(runner: FineTuner, head: str, protocols: list[Protocol], cfg: DictConfig):
    """Row ``head`` of ``runner``'s fine-tuning per protocol (and seed), and the full protocol's
    test predictions."""
    metrics: dict = {}
    roc: dict = {}
    for protocol in protocols:
        result, first = run_protocol(
            lambda fold, seed, p=protocol: runner.predict(p.name, fold, seed),
            runner.task,
            protocol,
            n_seeds(head, protocol, int(cfg.eval.seeds)),
            int(cfg.eval.bootstrap),
        )
        metrics.setdefault(head, {})[protocol.name] = result
        if protocol.name == "full":
            roc[head] = first
    return metrics, roc


def _rows_of(runner: FineTuner, heads: list[str], protocols: list[Protocol], cfg: DictConfig):
    """The finetune and soup rows (and the full protocol's test predictions) of one encoder."""
    n_boot = int(cfg.eval.bootstrap)
    metrics: dict = {}
    roc: dict = {}
    if "finetune" in heads:
        metrics, roc = _protocol_rows(runner, "finetune", protocols, cfg)
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
        """Named after everything that defines the run (the engine resumes from that folder).
        Without a regulariser the regulariser's keys are left out of the digest, so plain
        fine-tuning keeps the folders it had before they existed."""
        finetune = OmegaConf.to_container(self.cfg.finetune)
        if finetune.get("regularizer", "none") == "none":
            finetune = {
                k: v for k, v in finetune.items() if k != "regularizer" and k[:8] != "dr_tune_"
            }
        parts = [
            self.enc.key,
            OmegaConf.to_yaml(finetune),
            str(self.task.classes),
            fold.train.tobytes().hex(),
            fold.val.tobytes().hex(),
        ]
        digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
        where = fold.held_out or "all"
        name = re.sub(r"[^\w.=,-]", "_", protocol)[:64]  # incremental:base=...;shots=K
        return self.root / f"{name}-{where}-seed{seed}-{digest}"

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
