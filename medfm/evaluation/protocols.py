"""Label-budget protocols of downstream evaluation: which training samples a head may see.

* ``full``: every labelled training sample.
* ``fewshot:K``: K labelled samples per class (K in 1, 5, 10, 20 by default).
* ``fraction:F``: a fraction F of the labelled training samples (1 %, 10 %, 100 % by default).
* ``loco``: leave one center out; train on the other centers, test on the held-out one.

Resampling is *patient-grouped*: patients are drawn, never single images, so no patient's images
are split between "drawn" and "not drawn" (a k-shot draw of K patients per class takes every
image of those patients with that class, which is at least K images). Each draw is seeded, so
``seed`` picks one of the N repetitions reported as mean ± std.

Example:
    >>> [p.name for p in parse_protocols(["full", "fewshot:1,5"])]
    ['full', 'fewshot:1', 'fewshot:5']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

DEFAULT_SHOTS = (1, 5, 10, 20)
DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One protocol: ``kind`` in full/fewshot/fraction/loco and its shots or fraction."""

    kind: str
    value: float | None = None

    @property
    def name(self) -> str:
        """The protocol as written in ``eval.protocols`` (``full``, ``fewshot:5``,
        ``fraction:0.1``, ``loco``)."""
        if self.kind == "fewshot":
            return f"fewshot:{int(self.value)}"
        if self.kind == "fraction":
            return f"fraction:{self.value:g}"
        return self.kind

    @property
    def resampled(self) -> bool:
        """Whether seeds change the training set (few-shot and fractions below 1)."""
        return self.kind == "fewshot" or (self.kind == "fraction" and self.value < 1.0)


def _values(text: str, default: tuple, cast, what: str) -> list:
    if not text:
        return [cast(v) for v in default]
    try:
        return [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"protocol {what}:{text!r}: expected comma-separated numbers") from None


def parse_protocols(specs: str | Iterable[str]) -> list[Protocol]:
    """``"full"``, ``"fewshot:1,5,10,20"``, ``"fraction:0.01,0.1"``, ``"loco"``, or several of
    them (an iterable, or one string joined by ``;``); ``fewshot``/``fraction`` alone take the
    default grids."""
    items = specs.split(";") if isinstance(specs, str) else [str(s) for s in specs]
    out: list[Protocol] = []
    for item in _rejoin(s.strip() for s in items if s.strip()):
        kind, _, rest = item.partition(":")
        if kind in ("full", "loco") and not rest:
            out.append(Protocol(kind))
        elif kind == "fewshot":
            shots = _values(rest, DEFAULT_SHOTS, int, kind)
            if min(shots) < 1:
                raise ValueError(f"protocol {item!r}: shots per class must be >= 1")
            out += [Protocol("fewshot", k) for k in shots]
        elif kind == "fraction":
            fractions = _values(rest, DEFAULT_FRACTIONS, float, kind)
            if not all(0 < f <= 1 for f in fractions):
                raise ValueError(f"protocol {item!r}: fractions must lie in (0, 1]")
            out += [Protocol("fraction", f) for f in fractions]
        else:
            raise ValueError(
                f"unknown protocol {item!r}; use full, fewshot:K[,K...], fraction:F[,F...] or loco"
            )
    return list(dict.fromkeys(out))


def _rejoin(items: Iterable[str]) -> list[str]:
    """``["fewshot:1", "5", "full"]`` -> ``["fewshot:1,5", "full"]``: a list written as
    ``[fewshot:1,5]`` on the command line arrives split at its commas."""
    out: list[str] = []
    for item in items:
        if out and out[-1].startswith(("fewshot:", "fraction:")) and item[:1].isdigit():
            out[-1] += f",{item}"
        else:
            out.append(item)
    return out


def _patient_ids(labels: np.ndarray, patients: np.ndarray | None) -> np.ndarray:
    """Patient of each sample; a sample without one is its own patient."""
    if patients is None:
        return np.arange(len(labels)).astype(str)
    patients = np.asarray(patients).astype(str)
    return np.where(patients == "", [f"__sample{i}" for i in range(len(labels))], patients)


def few_shot(
    labels: np.ndarray, shots: int, seed: int, patients: np.ndarray | None = None
) -> np.ndarray:
    """Indices of every sample of ``shots`` randomly drawn patients per class (all of them when a
    class has fewer), sorted."""
    labels, rng = np.asarray(labels), np.random.default_rng([seed, shots, 1])
    pids = _patient_ids(labels, patients)
    keep = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        mine = labels == cls
        chosen = rng.permutation(np.unique(pids[mine]))[:shots]
        keep |= mine & np.isin(pids, chosen)
    return np.flatnonzero(keep)


def label_fraction(
    labels: np.ndarray, fraction: float, seed: int, patients: np.ndarray | None = None
) -> np.ndarray:
    """Indices of a random ``fraction`` of the patients, stratified by each patient's first
    label, with at least one patient per class; all samples when ``fraction`` is 1."""
    labels = np.asarray(labels)
    if fraction >= 1.0:
        return np.arange(len(labels))
    pids = _patient_ids(labels, patients)
    unique, first = np.unique(pids, return_index=True)
    rng = np.random.default_rng([seed, int(round(fraction * 1e6)), 2])
    chosen = []
    for cls in np.unique(labels[first]):
        group = unique[labels[first] == cls]
        n = max(1, int(round(fraction * len(group))))
        chosen += list(rng.permutation(group)[:n])
    return np.flatnonzero(np.isin(pids, chosen))


def train_subset(
    labels: np.ndarray, protocol: Protocol, seed: int, patients: np.ndarray | None = None
) -> np.ndarray:
    """The indices of the training samples ``protocol`` keeps (``full``/``loco``: all)."""
    if protocol.kind == "fewshot":
        return few_shot(labels, int(protocol.value), seed, patients)
    if protocol.kind == "fraction":
        return label_fraction(labels, float(protocol.value), seed, patients)
    return np.arange(len(labels))


def loco_folds(centers: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``(held-out center, mask of its samples)`` per center; an error without two centers."""
    centers = np.asarray(centers).astype(str)
    names = [c for c in np.unique(centers) if c != ""]
    if len(names) < 2:
        raise ValueError(
            "protocol loco needs a center column with at least two centers; the data has "
            f"{len(names)}. Ingest with a center column or drop loco"
        )
    return [(c, centers == c) for c in names]


def protocols_of(eval_cfg) -> list[Protocol]:
    """The protocols of ``eval.protocols`` (a list, or one string as the command line gives)."""
    specs = eval_cfg.protocols
    return parse_protocols(specs if isinstance(specs, str) else list(specs))
