"""Evaluate an encoder on a manifest: features per split, heads, test AUC, robustness index."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from omegaconf import DictConfig

from medfm.heads.registry import build_head
from medfm.metrics.classification import classification_report
from medfm.metrics.scores import accuracy, auc
from medfm.robustness.index import robustness_index


@dataclasses.dataclass
class FeatureTable:
    """Features with the manifest columns the heads and the robustness index need."""

    features: np.ndarray  # (n, d)
    label: np.ndarray
    center: np.ndarray
    patient: np.ndarray
    split: np.ndarray

    @classmethod
    def from_rows(cls, features: np.ndarray, rows: Sequence[dict]) -> FeatureTable:
        if len(features) != len(rows):
            raise ValueError(f"{len(features)} feature rows for {len(rows)} manifest rows")
        col = lambda name: np.array([r.get(name, "") for r in rows])  # noqa: E731
        return cls(features, col("label"), col("center"), col("patient"), col("split"))

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        keep = (self.split == split) & (self.label != "")
        return self.features[keep], self.label[keep]


def evaluate_heads(table: FeatureTable, eval_cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Fit each head on train (choosing its hyper-parameter on val) and score it on test."""
    X_tr, y_tr = table.part("train")
    X_va, y_va = table.part("val")
    X_te, y_te = table.part("test")
    if len(X_tr) == 0 or len(X_te) == 0:
        raise ValueError("the manifest needs labelled rows in both the 'train' and 'test' splits")
    results = {}
    for name in eval_cfg.heads:
        head = build_head(str(name), eval_cfg).fit(
            X_tr, y_tr, X_va if len(X_va) else None, y_va if len(y_va) else None
        )
        proba = head.predict_proba(X_te)
        results[str(name)] = {
            "test_auc": auc(y_te, proba, head.classes_),
            "test_acc": accuracy(y_te, head.predict(X_te)),
        } | _test_report(table, y_te, proba, head.classes_)
    return results


def _test_report(table: FeatureTable, y_te, proba, classes) -> dict:
    """CI (bootstrap over patients when they repeat), balanced accuracy, F1, ECE, per center."""
    keep = (table.split == "test") & (table.label != "")
    groups = table.patient[keep] if (table.patient[keep] != "").all() else None
    centers = table.center[keep] if (table.center[keep] != "").all() else None
    report = classification_report(y_te, proba, classes, groups=groups, centers=centers, n_boot=200)
    return {k: v for k, v in report.items() if k not in ("test_auc", "test_acc")}


def evaluate_robustness(table: FeatureTable, k: int) -> dict[str, float]:
    """Both robustness-index variants over labelled samples; same-patient neighbours excluded."""
    keep = (table.label != "") & (table.center != "")
    args = (table.features[keep], table.label[keep], table.center[keep])
    groups = table.patient[keep] if (table.patient[keep] != "").all() else None
    return {
        "robustness_index": robustness_index(*args, k=k, variant="ratio", groups=groups),
        "robustness_index_normalized": robustness_index(
            *args, k=k, variant="normalized", groups=groups
        ),
        "k": k,
    }
