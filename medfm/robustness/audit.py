"""The robustness audit (``medfm robustness``, :func:`medfm.api.audit`): do encoders represent the
medical center more than the biology?

Embeddings (:mod:`medfm.robustness.inputs`: encoders on a manifest, or ``.npz`` files) -> both
robustness-index variants with a bootstrap CI (:mod:`~medfm.robustness.index`), the RI-vs-k
curve (:mod:`~medfm.robustness.k_selection`), center-vs-biology predictability
(:mod:`~medfm.robustness.center_bio`), error attribution and the per-center-pair breakdown
(:mod:`~medfm.robustness.attribution`), APD (:mod:`~medfm.robustness.apd`) and
leave-one-center-out AUCs (:mod:`~medfm.robustness.loco`) -> ``robustness.json`` + the
robustness card ``report.html`` (:mod:`~medfm.robustness.card`) -> MLflow. Following de Jong et
al. 2025 ("Current Pathology Foundation Models are unrobust to Medical Center Differences") and
PathoROB (Kömen et al. 2025).

``robustness.json`` schema (every key always present; ``float`` values may be ``NaN`` or, for
the ratio index, ``Infinity``; JSON object keys are strings, so ``k`` keys read ``"5"``)::

    {
      "title": str,
      "dataset": {                              # of the first encoder's samples
        "n_samples": int, "n_centers": int, "n_classes": int,
        "centers": {center: int},               # samples per center
        "classes": {class: int},                # samples per class
      },
      "chance": {"robustness_index": float, "robustness_index_normalized": float, "n": int},
      "encoders": {
        name: {
          "k": int, "n": int,                   # neighbours per sample; samples audited
          "robustness_index": float,            # ratio (de Jong et al. 2025) at k
          "robustness_index_ci95": [float, float],
          "robustness_index_normalized": float, # SO / (SO + OS) (PathoROB) at k
          "robustness_index_normalized_ci95": [float, float],
          "ri_curve": {k: float},               # ratio index at every k of 5, 10, 20, 50 and k
          "ri_curve_normalized": {k: float},
          "center_vs_bio": {                    # balanced accuracies and their chance levels
            "knn" | "linear": {"center_accuracy": float, "bio_accuracy": float,
                               "center_chance": float, "bio_chance": float},
          },
          "error_attribution": {                # errors of out-of-fold linear predictions
            "fraction": float, "unsupported": float, "n_errors": int,
            "per_center": {center: float}, "errors_per_center": {center: int},
          },
          "pairs": {                            # C sorted centers index the (C, C) lists
            "centers": [str], "counts": [[int]], "same_bio": [[int]],
            "fractions": [[float]], "expected": [[float]],
          },
          "apd": float | null,                  # average performance drop; null: no fold
          "leave_one_center_out": {center: {"auc": float, "accuracy": float, "n": int}},
        },
      },
    }

The dict :func:`run_audit` returns has the same shape (``k`` keys as ``int``); the card also
receives each encoder's ``embedding_2d``, ``bio`` and ``center`` lists for its maps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from medfm.features.neighbours import max_neighbours
from medfm.figures import pca_2d
from medfm.io import write_json
from medfm.robustness.apd import average_performance_drop
from medfm.robustness.attribution import error_attribution, pair_breakdown
from medfm.robustness.card import render_robustness_card
from medfm.robustness.center_bio import center_vs_bio, out_of_fold_predictions
from medfm.robustness.checks import plain
from medfm.robustness.index import bootstrap_ci, chance_level
from medfm.robustness.inputs import AuditData, Weights, audit_data_from_encoders
from medfm.robustness.k_selection import DEFAULT_KS, ri_curves, select_k
from medfm.robustness.loco import leave_one_center_out
from medfm.tracking.base import Logger, NullLogger

K_GRID = DEFAULT_KS
CARD_ONLY = ("embedding_2d", "bio", "center")  # per-encoder keys for the card, not the JSON


def _choose_k(data: AuditData, k: int | str) -> int:
    limit = max_neighbours(len(data.bio), data.groups)
    if k == "auto":
        return select_k(data.embeddings, data.bio, [g for g in K_GRID if g <= limit], data.groups)
    return min(int(k), limit)


def audit_encoder(data: AuditData, k: int | str = 10, n_boot: int = 200, seed: int = 0) -> dict:
    """Every robustness measure of one encoder's embeddings: one ``encoders`` entry of the
    schema above, plus the card-only ``embedding_2d``, ``bio`` and ``center``.

    ``k="auto"`` picks the k of 5, 10, 20, 50 with the best biological kNN balanced accuracy
    (:func:`medfm.robustness.k_selection.select_k`); a k above what every sample can reach
    outside its group is lowered to that limit.
    """
    k = _choose_k(data, k)
    args = (data.embeddings, data.bio, data.center)
    limit = max_neighbours(len(data.bio), data.groups)
    curves = ri_curves(*args, [g for g in sorted({*K_GRID, k}) if g <= limit], data.groups)
    predicted = out_of_fold_predictions(data.embeddings, data.bio, data.groups, seed)
    attribution = error_attribution(*args, predicted, k, data.groups)
    result = {"k": k, "n": len(data.bio)}
    for variant, key in (
        ("ratio", "robustness_index"),
        ("normalized", "robustness_index_normalized"),
    ):
        result[key] = curves[variant][k]
        result[f"{key}_ci95"] = list(bootstrap_ci(*args, k, variant, data.groups, n_boot, seed))
    return result | {
        "ri_curve": curves["ratio"],
        "ri_curve_normalized": curves["normalized"],
        "center_vs_bio": _center_vs_bio(center_vs_bio(*args, k, data.groups, seed), data),
        "error_attribution": {
            "fraction": attribution["center_attributed"],
            "n_errors": attribution["n_errors"],
            "unsupported": attribution["unsupported"],
            "per_center": {c: v["center_attributed"] for c, v in attribution["per_center"].items()},
            "errors_per_center": {c: v["n_errors"] for c, v in attribution["per_center"].items()},
        },
        "pairs": pair_breakdown(*args, k, data.groups),
        "apd": average_performance_drop(*args, data.groups, seed),
        "leave_one_center_out": leave_one_center_out(*args),
        "embedding_2d": pca_2d(data.embeddings.astype(np.float64)).tolist(),
        "bio": data.bio.tolist(),
        "center": data.center.tolist(),
    }


def _center_vs_bio(scores: dict, data: AuditData) -> dict:
    """Reshape to ``{head: {center_accuracy, bio_accuracy, center_chance, bio_chance}}``."""
    chance = {
        "center_chance": 1 / len(np.unique(data.center)),
        "bio_chance": 1 / len(np.unique(data.bio)),
    }
    return {
        head: {
            "center_accuracy": scores[f"{head}_center_acc"],
            "bio_accuracy": scores[f"{head}_bio_acc"],
            **chance,
        }
        for head in ("knn", "linear")
    }


def _dataset(data: AuditData) -> dict:
    centers, per_center = np.unique(data.center, return_counts=True)
    classes, per_class = np.unique(data.bio, return_counts=True)
    return {
        "n_samples": len(data.bio),
        "n_centers": len(centers),
        "n_classes": len(classes),
        "centers": dict(zip(centers.tolist(), per_center.tolist(), strict=True)),
        "classes": dict(zip(classes.tolist(), per_class.tolist(), strict=True)),
    }


def run_audit(
    datasets: Mapping[str, AuditData],
    out_dir: str | os.PathLike,
    *,
    k: int | str = 10,
    n_boot: int = 200,
    seed: int = 0,
    title: str = "",
    logger: Logger | None = None,
) -> dict:
    """Audit every encoder of ``datasets`` (``{name: AuditData}``); write ``robustness.json``
    (the schema above) and the card ``report.html`` to ``out_dir``; log ``robustness[/name]/
    {ri_ratio, ri_normalized, k}`` and both files to ``logger``. Returns the JSON's content."""
    if not datasets:
        raise ValueError("no encoders to audit; pass at least one {name: AuditData}")
    logger, out_dir = logger or NullLogger(), Path(out_dir)
    first = next(iter(datasets.values()))
    results = plain(
        {
            "title": title or "Robustness card",
            "dataset": _dataset(first),
            "chance": chance_level(first.bio, first.center),
            "encoders": {name: audit_encoder(d, k, n_boot, seed) for name, d in datasets.items()},
        }
    )
    json_results = results | {
        "encoders": {
            name: {key: v for key, v in r.items() if key not in CARD_ONLY}
            for name, r in results["encoders"].items()
        }
    }
    paths = [
        write_json(json_results, out_dir / "robustness.json"),
        render_robustness_card(results, out_dir / "report.html"),
    ]
    for name, r in results["encoders"].items():
        prefix = "robustness" if len(datasets) == 1 else f"robustness/{_metric_name(name)}"
        logger.log_metrics(
            {
                f"{prefix}/ri_ratio": r["robustness_index"],
                f"{prefix}/ri_normalized": r["robustness_index_normalized"],
                f"{prefix}/k": r["k"],
            }
        )
    for path in paths:
        logger.log_artifact(path, "robustness")
    return json_results


def _metric_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-./" else "_" for ch in name)


def audit_encoders(
    encoders: Sequence[str],
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    bio: str = "label",
    center: str = "center",
    group: str | None = "patient",
    k: int | str = 10,
    n_boot: int = 200,
    seed: int = 0,
    weights: Weights = None,
    title: str = "",
    logger: Logger | None = None,
    progress: bool = True,
    cfg: DictConfig | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Embed the manifest ``data`` with every encoder spec and :func:`run_audit` them.

    ``encoders`` are the specs ``medfm evaluate`` accepts (a ``medfm pretrain`` out_dir,
    ``random:<dir or arch>``, ``timm:<name>`` with a local weights file, ``models:/NAME/VERSION``
    or ``models:/NAME@ALIAS``: that version also gets the RI tags and the card, see
    :func:`medfm.features.model_registry.attach_results`); ``weights`` is one
    file for every ``timm:`` spec or ``{spec: file}``. ``bio``, ``center`` and ``group`` name
    manifest columns (``group=None``: no neighbour exclusion). ``cfg`` (a
    :func:`medfm.config.load_config` result) gives ``data.*`` / ``model.*`` for architectures
    named by spec; ``cache_dir`` holds the feature cache (default ``out_dir/feature_cache``).
    Returns the ``robustness.json`` content (schema in this module's docstring).
    """
    cache = Path(cache_dir) if cache_dir else Path(out_dir) / "feature_cache"
    datasets = audit_data_from_encoders(
        encoders,
        data,
        bio,
        center,
        group,
        seed,
        progress,
        weights=weights,
        cfg=cfg,
        image_size=image_size,
        cache_dir=cache,
    )
    result = run_audit(datasets, out_dir, k=k, n_boot=n_boot, seed=seed, title=title, logger=logger)
    if any(str(spec).startswith("models:/") for spec in encoders):  # medfm register versions
        from medfm.features.model_registry import attach_model_versions

        attach_model_versions(encoders, out_dir)  # RI tags + card on each registered version
    return result
