"""``medfm curate --sweep``: the kept fraction against the threshold for each method, on a sample
of the manifest, so a threshold can be chosen before any compute is spent on pre-training.

Each sampled row is read once; every method's signatures are computed from the same units, and
each threshold of :data:`medfm.curation.methods.SWEEPS` only re-runs the reduction.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from medfm.curation import methods
from medfm.curation.outputs import plot_sweep
from medfm.curation.run import concat_parts, group_key, load_rows
from medfm.curation.units import iter_units
from medfm.io import write_json


def _sample(rows: list[dict], limit: int | None) -> list[dict]:
    """At most ``limit`` rows, evenly spaced through the manifest."""
    if not limit or len(rows) <= limit:
        return rows
    return [rows[int(i)] for i in np.linspace(0, len(rows) - 1, limit).round()]


def _collect(rows, data_cfg, chosen, scope, embedder, progress) -> dict[str, list]:
    """Per method, the signature of every group of units (a list of parts per group)."""
    groups: dict[str, dict[tuple, list]] = {m: defaultdict(list) for m in chosen}
    units_of = iter_units(rows, data_cfg)
    for i, units in enumerate(tqdm(units_of, total=len(rows), desc="sweep", disable=not progress)):
        if isinstance(units, Exception):
            continue
        key = group_key(rows[i], i, units, scope)
        for method in chosen:
            groups[method][key].append(methods.signatures(method, units.images, embedder))
    return {m: [concat_parts(parts) for parts in g.values()] for m, g in groups.items()}


def _kept_fraction(method: str, groups: list, threshold: float, scope: str) -> float:
    seen = sum(len(sig) for sig in groups)
    reduce = methods.reduce_dataset if scope == "dataset" else methods.reduce_group
    kept = sum(len(reduce(method, sig, threshold)) for sig in groups if len(sig))
    return kept / seen if seen else 0.0


def sweep(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    data_cfg: DictConfig,
    scope: str = "volume",
    embedder: methods.Embedder | None = None,
    limit: int | None = 200,
    progress: bool = True,
) -> dict[str, dict[float, float]]:
    """``{method: {threshold: kept fraction}}`` for every method that applies (``embedding``
    only with an ``embedder``; ``ssim``/``mi`` only at volume scope); writes ``sweep.json`` and
    ``sweep.png`` to ``out_dir``."""
    rows, _ = load_rows(data)
    if not rows:
        raise ValueError(f"{data} has no rows: nothing to sweep")
    chosen = [
        m
        for m in methods.METHODS
        if (m != "embedding" or embedder is not None)
        and not (scope == "dataset" and m in ("ssim", "mi"))
    ]
    groups = _collect(_sample(rows, limit), data_cfg, chosen, scope, embedder, progress)
    table = {
        m: {t: _kept_fraction(m, groups[m], t, scope) for t in methods.SWEEPS[m]} for m in chosen
    }
    out_dir = Path(out_dir)
    write_json(
        {m: {str(t): f for t, f in c.items()} for m, c in table.items()}, out_dir / "sweep.json"
    )
    plot_sweep(table, out_dir / "sweep.png")
    return table


def format_sweep(table: dict[str, dict[float, float]]) -> str:
    """The sweep as text: one line per method, ``threshold: kept%`` pairs."""
    lines = []
    for method, curve in table.items():
        cells = "  ".join(f"{t:g}: {f:.0%}" for t, f in curve.items())
        lines.append(f"{method:<10} {cells}")
    return "\n".join(lines)
