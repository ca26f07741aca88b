"""``medfm robustness``: audit one or more encoders for center-versus-biology robustness.

Embeddings (from encoders on a manifest, or given as ``.npz`` files) -> both robustness-index
variants with a bootstrap CI, the RI-vs-k curve, center-vs-biology predictability, error
attribution, a per-center-pair breakdown, APD and leave-one-center-out AUCs
(:mod:`medfm.robustness.analyses`) -> ``robustness.json`` + the robustness card ``report.html``
(:mod:`medfm.robustness.card`) -> MLflow. Following de Jong et al. 2025 ("Current Pathology
Foundation
Models are unrobust to Medical Center Differences") and PathoROB (Kömen et al. 2025).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GroupShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    cross_val_predict,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medfm.evaluation.legacy_runner import write_json
from medfm.features.neighbours import knn_search, max_neighbours
from medfm.figures import pca_2d
from medfm.heads.registry import LinearProbe
from medfm.robustness import analyses as audit
from medfm.robustness.card import render_robustness_card
from medfm.robustness.index import index_from_counts, neighbour_counts
from medfm.tracking.base import Logger, NullLogger

K_GRID = (5, 10, 20, 50)


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


def chance_level(bio: np.ndarray, center: np.ndarray) -> dict[str, float]:
    """Both indices when neighbours are drawn at random (class balance and center sizes set it)."""
    n = len(bio)
    _, b_idx, b_n = np.unique(bio, return_inverse=True, return_counts=True)
    _, c_idx, c_n = np.unique(center, return_inverse=True, return_counts=True)
    pair = np.zeros((len(b_n), len(c_n)))
    np.add.at(pair, (b_idx, c_idx), 1)
    same_bio = (b_n[b_idx] - 1).sum()
    same_center = (c_n[c_idx] - 1).sum()
    ss = (pair[b_idx, c_idx] - 1).sum()
    so, os_ = same_bio - ss, same_center - ss
    return {
        "robustness_index": float(same_bio / max(same_center, 1)),
        "robustness_index_normalized": float(so / max(so + os_, 1)),
        "n": n,
    }


def _folds(data: AuditData, seed: int):
    if data.groups is not None:
        return StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(
            data.embeddings, data.bio, data.groups
        )
    return StratifiedKFold(5, shuffle=True, random_state=seed).split(data.embeddings, data.bio)


def out_of_fold_predictions(data: AuditData, seed: int = 0) -> np.ndarray:
    """Each sample's class predicted by a linear probe that never saw it (or its patient)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return cross_val_predict(model, data.embeddings, data.bio, cv=list(_folds(data, seed)))


def average_performance_drop(data: AuditData, seed: int = 0) -> float | None:
    """APD over held-out centers: a probe trained on the other centers, tested in and out."""
    drops = []
    for held in np.unique(data.center):
        inside = np.flatnonzero(data.center != held)
        groups = data.groups[inside] if data.groups is not None else inside
        split = GroupShuffleSplit(1, test_size=0.3, random_state=seed)
        fit, test = next(split.split(inside, groups=groups))
        fit, test, out = inside[fit], inside[test], np.flatnonzero(data.center == held)
        if min(len(np.unique(data.bio[s])) for s in (fit, test, out)) < 2:
            continue
        head = LinearProbe().fit(data.embeddings[fit], data.bio[fit])
        drops.append(
            audit.performance_drop(
                data.bio[test],
                head.predict_proba(data.embeddings[test]),
                data.bio[out],
                head.predict_proba(data.embeddings[out]),
                head.classes_,
            )
        )
    return float(np.mean(drops)) if drops else None


def _choose_k(data: AuditData, k: int | str) -> int:
    limit = max_neighbours(len(data.bio), data.groups)
    if k == "auto":
        return audit.select_k(
            data.embeddings, data.bio, [g for g in K_GRID if g <= limit], data.groups
        )
    return min(int(k), limit)


def audit_encoder(data: AuditData, k: int | str = 10, n_boot: int = 200, seed: int = 0) -> dict:
    """Every robustness measure of one encoder's embeddings, in the robustness-card schema."""
    k = _choose_k(data, k)
    args = (data.embeddings, data.bio, data.center)
    ks = [g for g in sorted({*K_GRID, k}) if g <= max_neighbours(len(data.bio), data.groups)]
    attribution = audit.error_attribution(
        *args, out_of_fold_predictions(data, seed), k, data.groups
    )
    # one search at the largest k: neighbours at a smaller k are a prefix (ties go to the lower
    # index), so both indices and both curves come from the same neighbour table
    neighbours = knn_search(data.embeddings, max(ks), data.groups)[0]
    curves = {
        variant: {
            g: index_from_counts(
                neighbour_counts(neighbours[:, :g], data.bio, data.center), variant
            )
            for g in ks
        }
        for variant in ("ratio", "normalized")
    }
    result = {"k": k, "n": len(data.bio)}
    for variant, key in (
        ("ratio", "robustness_index"),
        ("normalized", "robustness_index_normalized"),
    ):
        result[key] = curves[variant][k]
        result[f"{key}_ci95"] = list(
            audit.bootstrap_ci(*args, k, variant, data.groups, n_boot, seed)
        )
    result |= {
        "ri_curve": curves["ratio"],
        "ri_curve_normalized": curves["normalized"],
        "center_vs_bio": _center_vs_bio(audit.center_vs_bio(*args, k, data.groups, seed), data),
        "error_attribution": {
            "fraction": attribution["center_attributed"],
            "n_errors": attribution["n_errors"],
            "unsupported": attribution["unsupported"],
            "per_center": {c: v["center_attributed"] for c, v in attribution["per_center"].items()},
        },
        "pairs": audit.pair_breakdown(*args, k, data.groups),
        "apd": average_performance_drop(data, seed),
        "leave_one_center_out": audit.leave_one_center_out(*args),
        "embedding_2d": pca_2d(data.embeddings.astype(np.float64)).tolist(),
        "bio": data.bio.tolist(),
        "center": data.center.tolist(),
    }
    return result


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
    """Audit every encoder; write ``robustness.json`` and ``report.html``; log to MLflow."""
    logger, out_dir = logger or NullLogger(), Path(out_dir)
    first = next(iter(datasets.values()))
    results = {
        "title": title or "Robustness card",
        "dataset": {
            "n_samples": len(first.bio),
            "n_centers": len(np.unique(first.center)),
            "n_classes": len(np.unique(first.bio)),
            "centers": dict(zip(*np.unique(first.center, return_counts=True), strict=True)),
            "classes": dict(zip(*np.unique(first.bio, return_counts=True), strict=True)),
        },
        "chance": chance_level(first.bio, first.center),
        "encoders": {name: audit_encoder(d, k, n_boot, seed) for name, d in datasets.items()},
    }
    results = _plain(results)
    json_results = {
        **results,
        "encoders": {
            name: {key: v for key, v in r.items() if key not in ("embedding_2d", "bio", "center")}
            for name, r in results["encoders"].items()
        },
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


def _plain(value):
    """numpy scalars and keys -> Python, so the results serialise as JSON."""
    if isinstance(value, dict):
        return {
            str(_plain(k)) if not isinstance(k, int | str) else k: _plain(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _manifest_columns(rows: list[dict]) -> dict[str, list]:
    names = {key for row in rows for key in row}
    return {name: [row.get(name, "") for row in rows] for name in names}


def audit_data_from_encoders(
    encoders: Sequence[str],
    manifest: str | os.PathLike,
    bio: str,
    center: str,
    group: str | None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, AuditData]:
    """Embed the manifest with every encoder (``random:<dir>`` = random init of that design)."""
    from medfm.data.ingestion.manifest import read_manifest
    from medfm.evaluation.legacy_runner import encoder_features

    rows = read_manifest(manifest)
    columns = _manifest_columns(rows)
    out = {}
    for spec in encoders:
        random_init = spec.startswith("random:")
        path = spec.removeprefix("random:")
        table, _ = encoder_features(
            path, rows, random_init=random_init, seed=seed, progress=progress
        )
        name = ("random:" if random_init else "") + Path(path).resolve().name
        out[name] = AuditData.from_columns(table.features, columns, bio, center, group)
    return out


def audit_data_from_npz(
    paths: Sequence[str | os.PathLike], bio: str, center: str, group: str | None
) -> dict[str, AuditData]:
    """``.npz`` files holding ``embeddings`` ``(n, d)`` and one array per column."""
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
