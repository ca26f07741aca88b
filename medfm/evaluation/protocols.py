"""Label-budget protocols of downstream evaluation: which training samples a head may see.

* ``full``: every labelled training sample.
* ``fewshot:K``: K labelled samples per class (K in 1, 5, 10, 20 by default).
* ``fraction:F``: a fraction F of the labelled training samples (1 %, 10 %, 100 % by default).
* ``loco``: leave one center out; train on the other centers, test on the held-out one.
* ``incremental:base=C1,C2;shots=K``: class-incremental (few-shot class-incremental learning,
  as TEEN, Wang et al., NeurIPS 2023, evaluates it): the *base* classes ``C1, C2`` (class names
  as in the labels) keep every training label, every other class is *novel* and keeps K
  patients (default 5; drawn as ``fewshot:K``); ``base=F`` with ``0 < F < 1`` takes the first
  ``round(F * n_classes)`` classes in sorted order as base (at least one base and one novel
  class). Every head trains on that subset; the prototype head calibrates its novel prototypes
  with the base ones (TEEN, :func:`medfm.heads.prototype.teen_calibrate`). Reports add the
  accuracy on base-class and on novel-class test images and their harmonic mean.

Resampling is *patient-grouped*: patients are drawn, never single images, so no patient's images
are split between "drawn" and "not drawn" (a k-shot draw of K patients per class takes every
image of those patients with that class, which is at least K images). Each draw is seeded, so
``seed`` picks one of the N repetitions reported as mean ± std.

Example:
    >>> [p.name for p in parse_protocols(["full", "fewshot:1,5"])]
    ['full', 'fewshot:1', 'fewshot:5']
    >>> [p.name for p in parse_protocols("incremental:base=benign,normal;shots=2")]
    ['incremental:base=benign,normal;shots=2']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

DEFAULT_SHOTS = (1, 5, 10, 20)
DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
DEFAULT_INCREMENTAL_SHOTS = 5
KINDS = ("full", "fewshot", "fraction", "loco", "incremental")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One protocol: ``kind`` in full/fewshot/fraction/loco/incremental, its shots (fewshot,
    incremental) or fraction, and for incremental the ``base`` classes as written (names, or
    one fraction of the classes)."""

    kind: str
    value: float | None = None
    base: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The protocol as written in ``eval.protocols`` (``full``, ``fewshot:5``,
        ``fraction:0.1``, ``loco``, ``incremental:base=a,b;shots=5``)."""
        if self.kind == "fewshot":
            return f"fewshot:{int(self.value)}"
        if self.kind == "fraction":
            return f"fraction:{self.value:g}"
        if self.kind == "incremental":
            return f"incremental:base={','.join(self.base)};shots={int(self.value)}"
        return self.kind

    @property
    def resampled(self) -> bool:
        """Whether seeds change the training set (few-shot, incremental and fractions below
        1)."""
        return self.kind in ("fewshot", "incremental") or (
            self.kind == "fraction" and self.value < 1.0
        )

    def base_classes(self, classes: np.ndarray) -> np.ndarray:
        """The base classes of an incremental protocol among the task's sorted ``classes``:
        the names given, or the first ``round(F * n)`` classes (clipped to ``[1, n - 1]``) for
        ``base=F``; a ``ValueError`` for an unknown name or when no class is left novel."""
        classes = np.asarray(classes).astype(str)
        fraction = _base_fraction(self.base)
        if fraction is not None and self.base[0] not in classes:
            n = min(max(int(round(fraction * len(classes))), 1), len(classes) - 1)
            return classes[:n]
        base = np.array(self.base)
        unknown = base[~np.isin(base, classes)]
        if len(unknown):
            raise ValueError(
                f"protocol {self.name!r}: base classes {unknown.tolist()} are not labels of the "
                f"data; its classes are {classes.tolist()}"
            )
        if np.isin(classes, base).all():
            raise ValueError(
                f"protocol {self.name!r}: every class is a base class, so none is novel; leave "
                "at least one class out of base="
            )
        return classes[np.isin(classes, base)]


def _base_fraction(base: tuple[str, ...]) -> float | None:
    """``F`` when ``base`` is a single number in (0, 1), else None."""
    if len(base) != 1:
        return None
    try:
        value = float(base[0])
    except ValueError:
        return None
    return value if 0 < value < 1 else None


def _values(text: str, default: tuple, cast, what: str) -> list:
    if not text:
        return [cast(v) for v in default]
    try:
        return [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"protocol {what}:{text!r}: expected comma-separated numbers") from None


def parse_protocols(specs: str | Iterable[str]) -> list[Protocol]:
    """``"full"``, ``"fewshot:1,5,10,20"``, ``"fraction:0.01,0.1"``, ``"loco"``,
    ``"incremental:base=C1,C2;shots=K"`` (or ``base=F``; ``;shots=K`` optional), or several of
    them (an iterable, or one string joined by ``;``); ``fewshot``/``fraction`` alone take the
    default grids."""
    specs = [specs] if isinstance(specs, str) else specs
    items = [part for spec in specs for part in str(spec).split(";")]
    out: list[Protocol] = []
    for item in _rejoin(s.strip() for s in items if s.strip()):
        kind, _, rest = item.partition(":")
        if kind in ("full", "loco") and not rest:
            out.append(Protocol(kind))
        elif kind == "incremental":
            out.append(_incremental(item, rest))
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
                f"unknown protocol {item!r}; use full, fewshot:K[,K...], fraction:F[,F...], "
                "loco or incremental:base=C1,C2[;shots=K]"
            )
    return list(dict.fromkeys(out))


def _incremental(item: str, rest: str) -> Protocol:
    """``base=C1,C2`` or ``base=F``, then optionally ``;shots=K``."""
    fields = dict(part.partition("=")[::2] for part in rest.split(";"))
    base = tuple(c.strip() for c in fields.pop("base", "").split(",") if c.strip())
    shots = fields.pop("shots", str(DEFAULT_INCREMENTAL_SHOTS))
    if not base or fields:
        raise ValueError(
            f"protocol {item!r}: write incremental:base=C1,C2[;shots=K] (class names as in the "
            "labels) or incremental:base=F[;shots=K] (the first fraction F of the classes)"
        )
    if len(set(base)) < len(base):
        raise ValueError(f"protocol {item!r}: a base class is named twice")
    try:
        k = int(shots)
    except ValueError:
        raise ValueError(f"protocol {item!r}: shots must be an integer") from None
    if k < 1:
        raise ValueError(f"protocol {item!r}: shots per novel class must be >= 1")
    return Protocol("incremental", k, base)


def _rejoin(items: Iterable[str]) -> list[str]:
    """``["fewshot:1", "5", "full"]`` -> ``["fewshot:1,5", "full"]``: a list written as
    ``[fewshot:1,5]`` on the command line arrives split at its commas (and
    ``incremental:base=a,b`` as ``["incremental:base=a", "b"]``); a string joined by ``;``
    arrives with ``incremental:base=a,b;shots=5`` split into ``[..., "shots=5"]``."""
    out: list[str] = []
    for item in items:
        last = out[-1] if out else ""
        open_incremental = last.startswith("incremental:") and ";shots=" not in last
        if last.startswith(("fewshot:", "fraction:")) and item[:1].isdigit():
            out[-1] += f",{item}"
        elif open_incremental and item.startswith("shots="):
            out[-1] += f";{item}"
        elif open_incremental and "=" not in item and item.partition(":")[0] not in KINDS:
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


def incremental_subset(
    labels: np.ndarray,
    base: np.ndarray,
    shots: int,
    seed: int,
    patients: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of every sample of a ``base`` class and of ``shots`` patients per novel class
    (:func:`few_shot` on the novel samples), sorted."""
    labels = np.asarray(labels)
    is_base = np.isin(labels, base)
    novel = np.flatnonzero(~is_base)
    pids = None if patients is None else np.asarray(patients)[novel]
    drawn = novel[few_shot(labels[novel], shots, seed, pids)]
    return np.sort(np.concatenate([np.flatnonzero(is_base), drawn]))


def train_subset(
    labels: np.ndarray,
    protocol: Protocol,
    seed: int,
    patients: np.ndarray | None = None,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """The indices of the training samples ``protocol`` keeps (``full``/``loco``: all;
    ``incremental`` needs its resolved ``base`` classes)."""
    if protocol.kind == "fewshot":
        return few_shot(labels, int(protocol.value), seed, patients)
    if protocol.kind == "fraction":
        return label_fraction(labels, float(protocol.value), seed, patients)
    if protocol.kind == "incremental":
        if base is None:
            raise ValueError("train_subset: an incremental protocol needs its base classes")
        return incremental_subset(labels, base, int(protocol.value), seed, patients)
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
