"""Where a head's errors and an encoder's neighbours come from: error attribution to same-center
look-alikes, and the per-center-pair breakdown of the neighbourhoods.

de Jong et al. 2025 ("Current Pathology Foundation Models are unrobust to Medical Center
Differences") trace misclassifications to the center signature; PathoROB (Kömen et al. 2025)
and de Jong et al. read the robustness index at the level of centers. Neighbours are the exact
cosine k nearest of :func:`medfm.features.neighbours.knn_search` (the sample itself and its
group excluded, ties to the lower index).
"""

from __future__ import annotations

import numpy as np

from medfm.features.neighbours import knn_search
from medfm.robustness.checks import check_groups, check_labels, plain


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
    bio, center = check_labels(embeddings, bio, center)
    predicted = np.asarray(predicted)
    if predicted.shape != bio.shape:
        raise ValueError(
            f"predicted ({len(predicted)}) and bio ({len(bio)}) must have the same length; "
            "pass one predicted class per sample"
        )
    groups = check_groups(groups, len(bio))
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
    per_center = {plain(c): summary(center == c) for c in np.unique(center)}
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
    bio, center = check_labels(embeddings, bio, center)
    groups = check_groups(groups, len(bio))
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
