"""Gain of each encoder head over its random-init twin: "does pre-training help?", with a CI.

For every row ``R`` whose baseline ``random:R`` was scored in the same run (linear, kNN, ...,
fine-tuning and soups), the ``full`` protocol entry of ``R`` gets

* ``gain_vs_random``: ``test_auc(R) - test_auc(random:R)`` (the means over seeds), and
* ``gain_vs_random_ci95``: the paired, patient-grouped percentile bootstrap 95 % CI of that
  difference (:func:`medfm.metrics.classification.bootstrap_auc_gain_ci`) on the first
  repetition's test predictions, so both heads are scored on the same resampled patients.

An interval above 0 says pre-training helped this head on this test set.
"""

from __future__ import annotations

from medfm.evaluation.protocols import Protocol
from medfm.evaluation.tasks import EvalTask
from medfm.metrics.classification import bootstrap_auc_gain_ci

PREFIX = "random:"


def add_gains(metrics: dict, roc: dict, task: EvalTask, n_boot: int) -> dict:
    """Add ``gain_vs_random`` and ``gain_vs_random_ci95`` to the ``full`` entry of every row
    with a ``random:`` twin in ``roc`` (``{row: (y_test, proba, classes)}`` of the full
    protocol's first repetition); returns ``metrics``. Multi-label tasks get none."""
    if task.multilabel:
        return metrics
    groups = task.groups(task.folds(Protocol("full"), 0)[0].test)
    for row, (y_test, proba, classes) in roc.items():
        twin = roc.get(PREFIX + row)
        if ":" in row or twin is None or len(set(y_test.tolist())) < 2:
            continue
        entry, reference = metrics[row]["full"], metrics[PREFIX + row]["full"]
        entry["gain_vs_random"] = float(entry["test_auc"]) - float(reference["test_auc"])
        lo, hi = bootstrap_auc_gain_ci(y_test, proba, twin[1], classes, groups, n_boot)
        entry["gain_vs_random_ci95"] = [lo, hi]
    return metrics


def gains_markdown(metrics: dict) -> list[str]:
    """Lines of the "Gain over random initialisation" section of ``metrics.md`` (none when no
    row has a gain)."""
    rows = [(row, e["full"]) for row, e in metrics.items() if "gain_vs_random" in e.get("full", {})]
    if not rows:
        return []
    lines = [
        "",
        "## Gain over random initialisation (full protocol, test AUC)",
        "",
        "| Head | Gain | 95% CI (paired bootstrap) |",
        "|---|---|---|",
    ]
    for row, entry in rows:
        lo, hi = entry["gain_vs_random_ci95"]
        lines.append(f"| {row} | {entry['gain_vs_random']:+.3f} | [{lo:+.3f}, {hi:+.3f}] |")
    return lines
