"""``medfm evaluate``: THE downstream evaluation of one encoder (``medfm demo`` and the notebooks
call the same :func:`evaluate`).

encoder + data -> features (cached) of the encoder, of its random-init twin and of raw pixels
(:mod:`medfm.evaluation.sources`) -> every head of ``eval.heads`` fitted per protocol fold and
seed (:mod:`medfm.evaluation.scoring`; fine-tuning and soups in
:mod:`medfm.evaluation.images`) -> ``metrics.json``, ``metrics.md``, plots and one nested MLflow
run per row and protocol (:mod:`medfm.evaluation.outputs`).

The ``metrics.json`` schema
---------------------------

``{row: {protocol: entry}}``, keys sorted.

*row* (str): an encoder head, ``linear``, ``knn``, ``gda``, ``prototype``, ``mlp``,
``finetune``, ``dr_tune`` (fine-tuning under the same budget and early stopping as
``finetune``, regularised by the frozen pre-trained features, DR-Tune, Zhou et al., ICCV 2023;
:mod:`medfm.heads.dr_tune`), and for ``soup`` the three rows ``finetune_best``,
``soup_uniform`` and ``soup_greedy``; then the baselines of the same run, ``random:<row>`` (the
same architecture at random initialisation, every head including fine-tuning and soups but not
``dr_tune``, whose regulariser needs pre-trained features; present when the encoder has a
random twin) and
``pixels:linear`` (logistic regression on raw pixels pooled to at most 4096 values; present when
every image has the same shape). Baselines are omitted with ``eval.baselines=false``.

*protocol* (str): ``full``, ``fewshot:K``, ``fraction:F``, ``loco`` or
``incremental:base=C1,C2;shots=K`` (``eval.protocols``; the base classes as given, or
``base=F`` for the first fraction F of the sorted classes; every head trains on all rows of the
base classes and K patients per novel class, and the prototype head calibrates its novel
prototypes with TEEN); soup rows have ``full`` only.

*entry*, single-label task (all numbers are JSON numbers; ``NaN`` where undefined, e.g. the AUC
of a single-class held-out center):

=========================  =================  ===================================================
key                        type               meaning
=========================  =================  ===================================================
``test_auc``               float              test ROC AUC (macro one-vs-rest beyond 2 classes),
                                              mean over seeds (loco: over held-out centers)
``test_auc_std``           float              its sample std (0 for one repetition)
``test_auc_ci95``          [float, float]     bootstrap 95% CI (patients resampled when they
                                              repeat), mean of the repetitions' bounds
``test_acc``               float              accuracy; ``test_acc_std`` its std
``test_bacc``              float              balanced accuracy; ``test_bacc_std``
``test_f1``                float              macro F1; ``test_f1_std``
``test_ece``               float              expected calibration error; ``test_ece_std``
``n_seeds``                int                repetitions behind the means
``per_center``             {center: {...}}    only with 2+ centers in test (always for loco):
                                              ``{"test_auc": float, "test_acc": float, "n": int}``
``n_folds``                int                loco only: held-out centers
``gain_vs_random``         float              full protocol, rows with a ``random:`` twin only:
                                              ``test_auc`` minus the twin's
``gain_vs_random_ci95``    [float, float]     its paired bootstrap 95% CI (:mod:`.gains`)
``test_acc_base``          float              incremental only: accuracy on the test images of
                                              base classes (predicted among all classes);
                                              ``test_acc_base_std``
``test_acc_novel``         float              incremental only: the same on novel classes;
                                              ``test_acc_novel_std``
``test_acc_hm``            float              incremental only: harmonic mean ``2 b n / (b + n)``
                                              of the two, per repetition, then averaged;
                                              ``test_acc_hm_std``
=========================  =================  ===================================================

Soup rows (one set of members, not repeated) hold the same keys without the ``_std`` ones, with
``n_seeds`` the number of members, ``val_auc`` (float, validation AUC of those weights) and, for
``soup_greedy``, ``members_kept`` (int, members in the greedy soup).

Multi-label task (``;``-joined 0/1 labels): ``test_auc``, ``test_auc_std`` (the mean per-label
AUC), ``per_label_auc`` (list of floats, one per label, the first repetition's) and ``n_seeds``.
``tests/evaluation/test_schema.py`` holds both ``medfm evaluate`` and ``medfm demo`` to exactly
this shape.

Example (a notebook)::

    from medfm.config import load_config
    from medfm.evaluation.run import evaluate
    cfg = load_config(None, ["eval.heads=[linear,knn]", "eval.protocols=[full,fewshot:5]"])
    metrics = evaluate("runs/demo/pretrain", "breastmnist.npz", cfg, "runs/eval")
    metrics["linear"]["fewshot:5"]["test_auc"]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from medfm.data.datasets import build_dataset
from medfm.data.transforms.preprocess import check_same_preprocess
from medfm.evaluation.gains import add_gains
from medfm.evaluation.images import image_rows
from medfm.evaluation.outputs import log_nested, write_outputs
from medfm.evaluation.protocols import Protocol, protocols_of
from medfm.evaluation.scoring import fit_predict, n_seeds, run_protocol
from medfm.evaluation.sources import feature_sources
from medfm.evaluation.tasks import EvalTask, load_eval_rows
from medfm.features.encoders import EvalEncoder, check_encoder_spec, resolve_encoder
from medfm.heads.registry import HEADS, check_heads, image_heads
from medfm.tracking.base import Logger, NullLogger
from medfm.train.pretrain import infer_channels


def _data_cfg(rows: list[dict], cfg: DictConfig) -> DictConfig:
    """``data.*`` for architectures given by name, channels found from the first image."""
    return infer_channels(OmegaConf.merge(cfg, {"data": {"channels": None}}), rows).data


def load_encoder_for(
    encoder: str | os.PathLike | EvalEncoder,
    rows: list[dict],
    cfg: DictConfig,
    weights: str | None = None,
    image_size: int | None = None,
    pooling: str | None = None,
) -> EvalEncoder:
    """The encoder of a spec (run folder, ``random:...``, ``timm:...``) for these rows, its
    preprocessing checked against ``cfg.data`` and its pooling overridden by ``pooling``."""
    if isinstance(encoder, EvalEncoder):
        enc = encoder
    else:
        check_encoder_spec(str(encoder))
        data_cfg = _data_cfg(rows, cfg)
        enc = resolve_encoder(str(encoder), data_cfg, weights, image_size, int(cfg.seed), cfg.model)
    check_same_preprocess(enc.cfg.data, cfg.data, enc.name)
    if pooling:
        enc.cfg.model.pooling = pooling
    return enc


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
    ``eval.seeds``, with the random-init and raw-pixel baselines; writes ``out_dir/metrics.json``
    (schema above), ``metrics.md`` and plots and returns the metrics.

    Features are cached in ``cache_dir`` (default ``out_dir/feature_cache``)."""
    logger, out_dir = logger or NullLogger(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heads = [str(h) for h in cfg.eval.heads]
    check_heads(heads)
    if not isinstance(encoder, EvalEncoder):
        check_encoder_spec(str(encoder))  # before any image is read
    rows = load_eval_rows(data)
    task = EvalTask.from_rows(rows)
    enc = load_encoder_for(encoder, rows, cfg, weights, image_size, pooling)
    protocols = protocols_of(cfg.eval)
    dataset = build_dataset(rows, enc.cfg.data, progress=progress)
    cache = Path(cache_dir) if cache_dir else out_dir / "feature_cache"
    features = str(cfg.eval.features)
    sources = feature_sources(
        enc,
        rows,
        dataset,
        bool(cfg.eval.baselines),
        cache,
        progress,
        int(cfg.eval.batch_size),
        features,
    )
    logger.log_params(
        {
            "encoder": enc.name,
            "data": str(data),
            "heads": ",".join(heads),
            "protocols": ",".join(p.name for p in protocols),
            "seeds": int(cfg.eval.seeds),
            "pooling": str(enc.cfg.model.pooling),
            "features": features,
        }
    )
    metrics, roc = _feature_rows(sources, heads, protocols, task, cfg, progress)
    if any(h in heads for h in image_heads()):
        more, more_roc = image_rows(enc, dataset, task, heads, protocols, cfg, out_dir)
        metrics.update(more)
        roc.update(more_roc)
    add_gains(metrics, roc, task, int(cfg.eval.bootstrap))
    write_outputs(metrics, roc, out_dir, f"{enc.name} on {Path(data).name}", logger)
    log_nested(metrics, logger)  # after the files: a tracking failure cannot cost the results
    if str(encoder).startswith("models:/"):  # a registered version: its best head's AUC
        from medfm.features.model_registry import attach_evaluation

        attach_evaluation(str(encoder), metrics, out_dir)
    return metrics


def _feature_rows(
    sources: dict[str, np.ndarray],
    heads: list[str],
    protocols: list[Protocol],
    task: EvalTask,
    cfg: DictConfig,
    progress: bool,
) -> tuple[dict, dict]:
    """Rows of the feature heads on every source (``pixels:`` gets the linear probe only)."""
    metrics: dict = {}
    roc: dict = {}
    todo = [
        (prefix, h)
        for prefix in sources
        for h in heads
        if HEADS.get(h).trains_on == "features" and (prefix != "pixels:" or h == "linear")
    ]
    bar = tqdm(total=len(todo) * len(protocols), desc="evaluate", unit="run", disable=not progress)
    n_boot = int(cfg.eval.bootstrap)
    sources = {k: np.asarray(v, dtype=np.float64) for k, v in sources.items()}
    for prefix, head in todo:
        X = sources[prefix]
        for protocol in protocols:
            result, first = run_protocol(
                lambda fold, seed, h=head, X=X: fit_predict(h, X, task, fold, cfg, seed),
                task,
                protocol,
                n_seeds(head, protocol, int(cfg.eval.seeds)),
                n_boot,
            )
            metrics.setdefault(f"{prefix}{head}", {})[protocol.name] = result
            if protocol.name == "full" and not task.multilabel:
                roc[f"{prefix}{head}"] = first
            bar.update()
    bar.close()
    return metrics, roc
