"""Markdown tables for the downstream-evaluation report of ``medfm evaluate``.

The metrics mapping is shaped ``{row: {protocol: {"test_auc": ..., ...}}}``, where a row is a head
("linear", "knn") or a baseline whose name contains ":" ("random:linear", "pixels:linear"), and
a protocol is "full", "fewshot:K" or "fraction:F". Baselines are listed after the encoder rows.

Example:
    >>> print(metrics_markdown({"linear": {"full": {"test_auc": 0.87}}}).splitlines()[4])
    | linear | full | 0.870 | – | – | – | – | – | – |
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from medfm.evaluation.gains import gains_markdown
from medfm.io import write_text

MISSING = "–"
NOT_AVAILABLE = "n/a"
COLUMNS = (
    "Head",
    "Protocol",
    "AUC (mean ± std)",
    "95% CI",
    "Acc",
    "Bal. acc",
    "F1",
    "ECE",
    "Seeds",
)
_SCALARS = ("test_acc", "test_bacc", "test_f1", "test_ece")


def _fmt(value: object) -> str:
    """3 decimals; missing (``None``) -> "–"; NaN or non-numeric -> "n/a"."""
    if value is None:
        return MISSING
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return NOT_AVAILABLE
    return f"{number:.3f}" if math.isfinite(number) else NOT_AVAILABLE


def _is_finite(value: object) -> bool:
    """True for a finite number."""
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _auc_cell(entry: Mapping) -> str:
    """Format "0.873 ± 0.012"; just the mean when the std is missing or not finite."""
    mean, std = entry.get("test_auc"), entry.get("test_auc_std")
    if _is_finite(mean) and _is_finite(std):
        return f"{_fmt(mean)} ± {_fmt(std)}"
    return _fmt(mean)


def _ci_cell(ci: object) -> str:
    """``[lo, hi]`` -> "[0.800, 0.910]"; missing -> "–"; a NaN bound -> "n/a"."""
    if ci is None:
        return MISSING
    if not isinstance(ci, Sequence) or len(ci) != 2 or not all(_is_finite(v) for v in ci):
        return NOT_AVAILABLE
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _seeds_cell(n_seeds: object) -> str:
    """The number of seeds as an integer; missing -> "–"."""
    if n_seeds is None:
        return MISSING
    return str(int(n_seeds)) if _is_finite(n_seeds) else NOT_AVAILABLE  # type: ignore[arg-type]


def _cell_text(text: object) -> str:
    """A name safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def ordered_rows(metrics: Mapping[str, Mapping]) -> list[str]:
    """Row names in dict order, baselines (names containing ":") after the others."""
    return sorted(metrics, key=lambda name: ":" in str(name))


def _protocols(metrics: Mapping[str, Mapping], rows: Sequence[str]) -> list[tuple[str, str]]:
    """``(row, protocol)`` pairs with a metrics mapping, rows then protocols in order."""
    return [
        (row, protocol)
        for row in rows
        if isinstance(metrics[row], Mapping)
        for protocol, entry in metrics[row].items()
        if isinstance(entry, Mapping)
    ]


def _main_table(metrics: Mapping[str, Mapping], rows: Sequence[str]) -> list[str]:
    """The summary table: one line per (row, protocol)."""
    body = []
    for row, protocol in _protocols(metrics, rows):
        entry = metrics[row][protocol]
        body.append(
            [_cell_text(row), _cell_text(protocol), _auc_cell(entry)]
            + [_ci_cell(entry.get("test_auc_ci95"))]
            + [_fmt(entry.get(key)) for key in _SCALARS]
            + [_seeds_cell(entry.get("n_seeds"))]
        )
    return _table(COLUMNS, body)


def _center_table(per_center: Mapping[str, Mapping]) -> list[str]:
    """``{row: {center: {"test_auc", "n"}}}`` -> a table with one column per (sorted) center."""
    centers = sorted({str(c) for pc in per_center.values() for c in pc})
    header = ["Head"]
    for center in centers:
        n = next((pc[center].get("n") for pc in per_center.values() if center in pc), None)
        header.append(_cell_text(center) + (f" (n={n})" if n is not None else ""))
    body = [
        [_cell_text(row)] + [_fmt(pc[c].get("test_auc")) if c in pc else MISSING for c in centers]
        for row, pc in per_center.items()
    ]
    return _table(header, body)


def _per_center_section(metrics: Mapping[str, Mapping], rows: Sequence[str]) -> list[str]:
    """The "Per center (test AUC)" section, one table per protocol; empty if no per-center data."""
    by_protocol: dict[str, dict[str, Mapping]] = {}
    for row, protocol in _protocols(metrics, rows):
        per_center = metrics[row][protocol].get("per_center")
        if per_center:
            by_protocol.setdefault(protocol, {})[row] = per_center
    if not by_protocol:
        return []
    lines = ["", "## Per center (test AUC)"]
    for protocol, per_center in by_protocol.items():
        lines += ["", f"### {_cell_text(protocol)}", "", *_center_table(per_center)]
    return lines


def _incremental_section(metrics: Mapping[str, Mapping], rows: Sequence[str]) -> list[str]:
    """The "Class-incremental" section: base, novel and harmonic-mean test accuracy of every
    incremental protocol entry; empty when there is none."""
    keys = ("test_acc_base", "test_acc_novel", "test_acc_hm")
    body = [
        [_cell_text(row), _cell_text(protocol)]
        + [_fmt(metrics[row][protocol].get(k)) for k in keys]
        for row, protocol in _protocols(metrics, rows)
        if "test_acc_hm" in metrics[row][protocol]
    ]
    if not body:
        return []
    header = ("Head", "Protocol", "Base acc", "Novel acc", "Harmonic mean")
    return ["", "## Class-incremental (test accuracy)", "", *_table(header, body)]


def metrics_markdown(metrics: Mapping[str, Mapping], title: str = "Downstream evaluation") -> str:
    """The evaluation report as Markdown: a summary table, then per-center tables if any.

    Summary columns: Head | Protocol | AUC (mean ± std) | 95% CI | Acc | Bal. acc | F1 | ECE |
    Seeds, from the keys test_auc, test_auc_std, test_auc_ci95, test_acc, test_bacc, test_f1,
    test_ece and n_seeds. Values have 3 decimals, missing ones read "–" and NaN reads "n/a".
    Rows with a ``gain_vs_random`` get a section of their gains over the random-init twin;
    incremental protocol entries a section of their base, novel and harmonic-mean accuracy.
    """
    rows = ordered_rows(metrics)
    lines = [f"# {title}", "", *_main_table(metrics, rows), *gains_markdown(metrics)]
    lines += _incremental_section(metrics, rows)
    lines += _per_center_section(metrics, rows)
    return "\n".join(lines) + "\n"


def write_metrics_markdown(
    metrics: Mapping[str, Mapping],
    path: str | os.PathLike,
    title: str = "Downstream evaluation",
) -> Path:
    """Write :func:`metrics_markdown` to ``path`` atomically (:func:`medfm.io.write_text`)."""
    return write_text(metrics_markdown(metrics, title=title), path)
