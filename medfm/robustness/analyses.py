"""The robustness audit: is an encoder's neighbourhood, and are a head's errors, organised by the
medical center rather than by the biology?

Pure functions of arrays (``embeddings (n, d)``, per-sample ``bio`` class, ``center`` and optional
``groups`` such as the patient), following de Jong et al. 2025, "Current Pathology Foundation
Models are unrobust to Medical Center Differences" (robustness index, center vs biology
prediction, attribution of errors to same-center confounders, unseen-center generalisation) and
PathoROB (Kömen et al. 2025; normalized robustness index, average performance drop).

Neighbours are the exact cosine k nearest of :func:`medfm.features.neighbours.knn_search`: the
sample itself
and samples sharing its group are excluded, ties go to the lower index. Each function searches
once, for the largest ``k`` it needs, and reads smaller ``k`` as prefixes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medfm.features.neighbours import as_embeddings, knn_search, max_neighbours
from medfm.heads.registry import LinearProbe
from medfm.metrics.scores import accuracy, auc
from medfm.robustness.index import (
    _check_labels,
    _check_variant,
    index_from_counts,
    neighbour_counts,
)

DEFAULT_KS = (5, 10, 20, 50)


# ----------------------------------------------------------------------------- helpers


def _plain(value):
    """A numpy scalar as the Python value (for dict keys that print and serialise cleanly)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_ks(ks, n: int, groups, name: str) -> list[int]:
    """Sorted distinct ``ks``, each a positive integer that every sample can reach."""
    given = np.atleast_1d(np.asarray(ks)) if np.size(ks) else np.zeros(0)
    values = sorted({int(k) for k in given})
    if not values or values[0] < 1 or not all(float(k) == int(k) for k in given):
        raise ValueError(f"{name}={ks!r} must hold at least one positive integer k")
    limit = max_neighbours(n, groups)
    if values[-1] > limit:
        raise ValueError(
            f"{name}={tuple(ks)!r} asks for k={values[-1]}, but some samples have only {limit} "
            "eligible neighbours (samples outside their group); drop the larger values from "
            f"{name}"
        )
    return values


def _check_groups(groups, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n:
        raise ValueError(
            f"groups ({len(groups)}) and embeddings ({n}) must have the same length; pass one "
            "group label (e.g. patient) per sample"
        )
    return groups


def _vote_balanced_accuracy(neighbours: np.ndarray, labels: np.ndarray, ks: list[int]) -> dict:
    """Leave-one-out majority vote of the first k neighbours, balanced accuracy per k.

    Ties between classes go to the class that sorts first (as scikit-learn's kNN does)."""
    classes, codes = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(labels), len(classes)), dtype=np.int32)
    rows = np.arange(len(labels))
    out, done = {}, 0
    for k in ks:
        for col in range(done, k):
            votes[rows, codes[neighbours[:, col]]] += 1
        done = k
        out[k] = float(balanced_accuracy_score(codes, votes.argmax(1)))
    return out


def _anchor_counts(neighbours: np.ndarray, bio: np.ndarray, center: np.ndarray) -> np.ndarray:
    """``(n, 4)`` per-sample neighbour counts: same bio, same center, SO, OS."""
    same_bio = bio[neighbours] == bio[:, None]
    same_center = center[neighbours] == center[:, None]
    return np.stack(
        [
            same_bio.sum(1),
            same_center.sum(1),
            (same_bio & ~same_center).sum(1),
            (~same_bio & same_center).sum(1),
        ],
        axis=1,
    ).astype(np.int64)


def _index_from_totals(totals: np.ndarray, variant: str) -> float:
    same_bio, same_center, so, os_ = (float(t) for t in totals)
    if variant == "ratio":
        return same_bio / same_center if same_center else float("inf")
    return so / (so + os_) if so + os_ else float("nan")


# ----------------------------------------------------------------------------- choosing k


def knn_balanced_accuracy(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    groups: np.ndarray | None = None,
    *,
    backend: str = "auto",
) -> dict[int, float]:
    """Leave-one-out kNN balanced accuracy of ``labels`` at each k in ``ks``.

    Every sample is predicted by the majority vote of its k nearest neighbours (itself and its
    group excluded; class ties go to the class that sorts first); the score is the balanced
    accuracy (mean per-class recall) over all samples. With ``labels=bio`` this is the biological
    kNN accuracy of de Jong et al. 2025; with ``labels=center`` it measures how well the center
    can be read from the neighbourhood.

    Returns:
        ``{k: balanced accuracy}`` for the distinct ``ks`` in increasing order.
    """
    return _knn_scores(embeddings, labels, ks, groups, backend, "labels", "ks")


def _knn_scores(embeddings, labels, ks, groups, backend: str, label_name: str, ks_name: str):
    labels, _ = _check_labels(embeddings, labels, bio_name=label_name)
    groups = _check_groups(groups, len(labels))
    ks = _check_ks(ks, len(labels), groups, ks_name)
    neighbours = knn_search(embeddings, ks[-1], groups, backend=backend)[0]
    return _vote_balanced_accuracy(neighbours, labels, ks)


def select_k(
    embeddings: np.ndarray,
    bio: np.ndarray,
    grid: Sequence[int] = DEFAULT_KS,
    groups: np.ndarray | None = None,
    *,
    backend: str = "auto",
) -> int:
    """The k of ``grid`` with the highest biological kNN balanced accuracy.

    The robustness index depends on k (de Jong et al. 2025; PathoROB); this reads it at the
    neighbourhood size where the embedding best predicts the biology, the operating-k rule of
    croma's implementation of the PathoROB index. See :func:`knn_balanced_accuracy` (the kNN
    evaluation de Jong et al. 2025 use). Ties go to the smallest k.

    Example:
        >>> k = select_k(embeddings, bio, grid=(5, 10, 20, 50), groups=patient)
        >>> robustness_index(embeddings, bio, center, k=k, groups=patient)
    """
    scores = _knn_scores(embeddings, bio, grid, groups, backend, "bio", "grid")
    best = max(scores.values())
    return min(k for k, score in scores.items() if score == best)


# ----------------------------------------------------------------------------- the index


def ri_curve(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    variant: str = "ratio",
    groups: np.ndarray | None = None,
    *,
    backend: str = "auto",
) -> dict[int, float]:
    """The robustness index at every k of ``ks`` (``{k: RI}``, k increasing), from one search.

    Equal to :func:`medfm.robustness.index.robustness_index` at each k; ``variant`` is
    ``"ratio"`` (de Jong et al. 2025) or ``"normalized"`` (PathoROB, Kömen et al. 2025).
    """
    _check_variant(variant)
    bio, center = _check_labels(embeddings, bio, center)
    groups = _check_groups(groups, len(bio))
    ks = _check_ks(ks, len(bio), groups, "ks")
    neighbours = knn_search(embeddings, ks[-1], groups, backend=backend)[0]
    return {
        k: index_from_counts(neighbour_counts(neighbours[:, :k], bio, center), variant) for k in ks
    }


def bootstrap_ci(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    k: int = 10,
    variant: str = "ratio",
    groups: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    backend: str = "auto",
) -> tuple[float, float]:
    """``(lo, hi)`` percentile bootstrap confidence interval (95 % by default) of the robustness
    index (``variant`` ``"ratio"``, de Jong et al. 2025, or ``"normalized"``, PathoROB).

    The neighbours are computed ONCE, on all samples. Each of the ``n_boot`` replicates then
    resamples the anchors: it draws units with replacement -- whole ``groups`` (patients) when
    given, else single samples -- and counts each anchor's k neighbours as many times as its unit
    was drawn. The neighbourhoods themselves are not recomputed on the resampled set, so the
    interval reflects which samples (patients) were audited, not how a smaller or duplicated set
    would re-arrange the neighbours; this keeps 200 replicates cheap at 1M samples.

    Replicates where the index is undefined (``nan``) are dropped; when some are infinite the
    quantiles are taken without interpolation (``method="inverted_cdf"``).
    """
    _check_variant(variant)
    bio, center = _check_labels(embeddings, bio, center)
    groups = _check_groups(groups, len(bio))
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} must lie in (0, 1), e.g. 0.05 for a 95 % interval")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot={n_boot!r} must be a positive number of replicates")
    neighbours = knn_search(embeddings, k, groups, backend=backend)[0]
    units = np.arange(len(bio)) if groups is None else np.unique(groups, return_inverse=True)[1]
    units = units.reshape(-1)
    n_units = int(units.max()) + 1
    per_anchor = _anchor_counts(neighbours, bio, center)
    per_unit = np.stack(
        [np.bincount(units, per_anchor[:, j], n_units) for j in range(4)], axis=1
    )  # (n_units, 4)
    rng = np.random.default_rng(seed)
    stats = np.array(
        [
            _index_from_totals(
                np.bincount(rng.integers(0, n_units, n_units), minlength=n_units) @ per_unit,
                variant,
            )
            for _ in range(int(n_boot))
        ]
    )
    stats = stats[~np.isnan(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    method = "linear" if np.isfinite(stats).all() else "inverted_cdf"
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2], method=method)
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- what is encoded


def _linear_balanced_accuracy(x, y, groups, seed: int, cv: int) -> float:
    """Out-of-fold balanced accuracy of a standardised logistic regression; folds keep groups
    together (``StratifiedGroupKFold``) when ``groups`` are given."""
    if groups is None:
        splits = min(cv, int(np.unique(y, return_counts=True)[1].min()))
        splitter = StratifiedKFold(max(2, splits), shuffle=True, random_state=seed)
    else:
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise ValueError("groups has a single value; cross-validation needs two or more")
        splitter = StratifiedGroupKFold(min(cv, n_groups), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pred = cross_val_predict(model, x.astype(np.float64), y, groups=groups, cv=splitter)
    return float(balanced_accuracy_score(y, pred))


def center_vs_bio(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    k: int = 10,
    groups: np.ndarray | None = None,
    seed: int = 0,
    *,
    cv: int = 5,
    backend: str = "auto",
) -> dict[str, float]:
    """How well the medical center and the biology can each be predicted from the embeddings.

    de Jong et al. 2025 show that foundation-model features predict the center better than the
    biology; this measures both with the same two readers:

    * ``knn_*_acc``: leave-one-out majority vote of the k nearest neighbours (itself and its
      group excluded), as :func:`knn_balanced_accuracy`;
    * ``linear_*_acc``: out-of-fold predictions of a standardised scikit-learn
      ``LogisticRegression`` over ``cv`` stratified folds, grouped (``StratifiedGroupKFold``) so
      that no group (patient) is split across train and test when ``groups`` are given; ``seed``
      shuffles the folds.

    Returns:
        ``{"knn_center_acc", "knn_bio_acc", "linear_center_acc", "linear_bio_acc"}``, balanced
        accuracies (chance is ``1 / n_classes``).
    """
    x = as_embeddings(embeddings)
    bio, center = _check_labels(x, bio, center)
    groups = _check_groups(groups, len(bio))
    neighbours = knn_search(x, k, groups, backend=backend)[0]
    return {
        "knn_center_acc": _vote_balanced_accuracy(neighbours, center, [k])[k],
        "knn_bio_acc": _vote_balanced_accuracy(neighbours, bio, [k])[k],
        "linear_center_acc": _linear_balanced_accuracy(x, center, groups, seed, cv),
        "linear_bio_acc": _linear_balanced_accuracy(x, bio, groups, seed, cv),
    }


def error_attribution(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    predicted: np.ndarray,
    k: int = 10,
    groups: np.ndarray | None = None,
    *,
    backend: str = "auto",
) -> dict:
    """Which errors of a classifier are carried by same-center neighbours (de Jong et al. 2025
    trace misclassifications to the center signature).

    For a misclassified sample ``i`` (``predicted[i] != bio[i]``), let ``P_i`` be those of its k
    nearest neighbours (itself and its group excluded) whose class is the wrongly predicted one.
    The error is *center-attributed* when a strict majority of ``P_i`` comes from ``i``'s own
    center (``2 * |P_i from center[i]| > |P_i|``): the wrong class was suggested by same-center
    look-alikes. It is *unsupported* when ``P_i`` is empty: no neighbour carries the predicted
    class, so the neighbourhood does not explain the error. Only the misclassified samples are
    searched (their neighbours among all samples).

    Returns:
        ``{"n_errors", "center_attributed", "unsupported", "per_center", "attributed"}``: the
        number of errors; the fractions of errors that are center-attributed and unsupported
        (``nan`` without errors); ``per_center`` maps each center to the same three entries for
        its own samples; ``attributed`` is the ``(n,)`` boolean mask of center-attributed errors.
    """
    bio, center = _check_labels(embeddings, bio, center)
    predicted = np.asarray(predicted)
    if predicted.shape != bio.shape:
        raise ValueError(
            f"predicted ({len(predicted)}) and bio ({len(bio)}) must have the same length; "
            "pass one predicted class per sample"
        )
    groups = _check_groups(groups, len(bio))
    wrong = predicted != bio
    errors = np.flatnonzero(wrong)
    neighbours = knn_search(embeddings, k, groups, backend=backend, queries=errors)[0]
    carries = bio[neighbours] == predicted[errors, None]
    own = carries & (center[neighbours] == center[errors, None])
    attributed = np.zeros(len(bio), dtype=bool)
    attributed[errors] = 2 * own.sum(1) > carries.sum(1)
    unsupported = np.zeros(len(bio), dtype=bool)
    unsupported[errors] = ~carries.any(1)

    def summary(mask: np.ndarray) -> dict:
        errors = int(wrong[mask].sum())
        return {
            "n_errors": errors,
            "center_attributed": float(attributed[mask].sum() / errors) if errors else float("nan"),
            "unsupported": float(unsupported[mask].sum() / errors) if errors else float("nan"),
        }

    everything = summary(np.ones(len(bio), dtype=bool))
    per_center = {_plain(c): summary(center == c) for c in np.unique(center)}
    return everything | {"per_center": per_center, "attributed": attributed}


def pair_breakdown(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    k: int = 10,
    groups: np.ndarray | None = None,
    *,
    backend: str = "auto",
) -> dict:
    """Where each center's neighbours come from: counts per (anchor center, neighbour center).

    The center-level view behind the robustness index (de Jong et al. 2025; PathoROB): a heavy
    diagonal means neighbourhoods stay within a center.

    Returns:
        ``"centers"``: the ``C`` sorted center values, indexing the ``(C, C)`` arrays;
        ``"counts"[i, j]``: neighbour slots of anchors from center i filled by center j;
        ``"fractions"``: ``counts`` divided by its row sums (each row sums to 1);
        ``"same_bio"[i, j]``: the part of ``counts[i, j]`` where neighbour and anchor share the
        class; ``"expected"[i, j]``: the fraction a center-blind neighbourhood would give, i.e.
        the mean over anchors of center i of the share of center j among its eligible samples
        (all others outside its group). ``fractions / expected`` above 1 is enrichment.
    """
    bio, center = _check_labels(embeddings, bio, center)
    groups = _check_groups(groups, len(bio))
    neighbours = knn_search(embeddings, k, groups, backend=backend)[0]
    centers, c = np.unique(center, return_inverse=True)
    c = c.reshape(-1)
    n_c = len(centers)
    pair = (c[:, None] * n_c + c[neighbours]).ravel()
    counts = np.bincount(pair, minlength=n_c * n_c).reshape(n_c, n_c)
    same = (bio[neighbours] == bio[:, None]).ravel()
    same_bio = np.bincount(pair[same], minlength=n_c * n_c).reshape(n_c, n_c)
    return {
        "centers": centers,
        "counts": counts,
        "fractions": counts / counts.sum(1, keepdims=True),
        "same_bio": same_bio,
        "expected": _expected_fractions(c, n_c, groups),
    }


def _expected_fractions(c: np.ndarray, n_c: int, groups) -> np.ndarray:
    totals = np.bincount(c, minlength=n_c)
    if groups is None:
        own = np.eye(n_c, dtype=np.int64)[c]  # the sample itself
    else:
        g = np.unique(groups, return_inverse=True)[1].reshape(-1)
        per_group = np.zeros((g.max() + 1, n_c), dtype=np.int64)
        np.add.at(per_group, (g, c), 1)
        own = per_group[g]
    eligible = totals[None, :] - own
    share = eligible / eligible.sum(1, keepdims=True)
    expected = np.zeros((n_c, n_c))
    np.add.at(expected, c, share)
    return expected / np.bincount(c, minlength=n_c)[:, None]


# ----------------------------------------------------------------------------- heads


def performance_drop(
    y_true: np.ndarray,
    proba_in: np.ndarray,
    y_true_out,
    proba_out,
    classes: np.ndarray | None = None,
) -> float:
    """Average performance drop (APD) of a head from in-center to out-of-center test data.

    ``APD = mean_j(AUC_out_j / AUC_in) - 1``: the mean relative change in ROC AUC
    (:func:`medfm.metrics.scores.auc`) when the head, trained on some centers, is tested on the
    centers it has not seen (out, one or several test sets j) instead of held-out samples from
    its training centers (in). This is PathoROB's APD reduction (Kömen et al. 2025; mean over
    splits of the score relative to the baseline, minus one) with AUC for the score and the
    in-center test as the baseline. 0 means no drop; -0.1 means out-of-center AUC is 10 % lower;
    positive values mean the head does better out of center.

    Args:
        y_true, proba_in: in-center test labels ``(n,)`` and probabilities ``(n, C)``.
        y_true_out, proba_out: one out-of-center test set in the same form, or sequences of
            several (one per unseen center), whose relative changes are averaged.
        classes: column order of the probabilities, as in :func:`medfm.metrics.scores.auc`.
    """
    several = isinstance(proba_out, (list, tuple)) and len(proba_out) > 0
    several = several and np.ndim(proba_out[0]) == 2
    if several and len(y_true_out) != len(proba_out):
        raise ValueError(
            f"y_true_out ({len(y_true_out)} sets) and proba_out ({len(proba_out)} sets) must pair "
            "up, one label array per probability array"
        )
    outs = list(zip(y_true_out, proba_out, strict=True)) if several else [(y_true_out, proba_out)]
    auc_in = auc(y_true, proba_in, classes)
    if auc_in <= 0:
        raise ValueError("the in-center AUC is 0; a relative drop is undefined")
    return float(np.mean([auc(y, p, classes) / auc_in for y, p in outs]) - 1)


def leave_one_center_out(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    head_factory: Callable[[], object] | None = None,
) -> dict:
    """Train a head on all centers but one and test it on the held-out center, for each center.

    The out-of-center generalisation test behind de Jong et al. 2025 and PathoROB's
    out-of-domain evaluation. ``head_factory()`` returns an unfitted scikit-learn-style
    classifier (``fit(X, y)``, ``predict_proba``, ``classes_``); the default is
    :class:`medfm.heads.registry.LinearProbe`.

    Returns:
        ``{center: {"auc", "accuracy", "n"}}``: ROC AUC (``nan`` when the held-out center has a
        single class), accuracy and the number of held-out samples.
    """
    x = as_embeddings(embeddings)
    bio, center = _check_labels(x, bio, center)
    factory = LinearProbe if head_factory is None else head_factory
    out = {}
    for held in np.unique(center):
        test = center == held
        if len(np.unique(bio[~test])) < 2:
            raise ValueError(
                f"without center {_plain(held)!r} the training data hold a single class; "
                "leave-one-center-out needs two classes among the remaining centers"
            )
        head = factory().fit(x[~test], bio[~test])
        proba = head.predict_proba(x[test])
        pred = head.classes_[np.argmax(proba, axis=1)]
        single = len(np.unique(bio[test])) < 2
        out[_plain(held)] = {
            "auc": float("nan") if single else auc(bio[test], proba, head.classes_),
            "accuracy": accuracy(bio[test], pred),
            "n": int(test.sum()),
        }
    return out
