"""Similarities between two slices (SSIM, normalised mutual information) or two feature
vectors (cosine), for curation before pre-training.

Wolf et al. 2024 ("Less is More: Selective Reduction of CT Data for Self-Supervised Pre-Training
of Deep Learning Models with Contrastive Learning Improves Downstream Classification
Performance", Computers in Biology and Medicine 183:109242) compared reduction strategies
"based on deep embedding, information theory, and hashing" for removing redundant CT slices
before contrastive pre-training: structural similarity and mutual information between slices,
cosine similarity of deep embeddings, every n-th slice, and dHash. dHash (Hash-6) did best and
is the only one in their released code; these are the others, so that ``medfm curate`` can
compare them on a project's own data. :mod:`medfm.curation.reduce` turns each into a rule.
"""

from __future__ import annotations

import numpy as np

SSIM_SIGMA = 1.5  # Wang et al. 2004's Gaussian window (11 x 11 at skimage's truncate=3.5)
SSIM_MIN_SIDE = 11


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004) of two 2D slices of one shape, in [-1, 1].

    The paper compared SSIM between slices as a redundancy measure (a slice too similar to the
    last kept one is dropped; :func:`medfm.curation.reduce.consecutive_reduce`).

    scikit-image's ``structural_similarity`` with Wang et al.'s settings (Gaussian window
    sigma 1.5, K1 0.01, K2 0.03, population covariance), which equals MONAI's ``SSIMMetric``
    defaults to ~1e-6: scikit-image works on numpy slices of any size directly, where MONAI
    needs ``(B, C, H, W)`` tensors. The data range is that of the pair (max of both minus min
    of both), since slices arrive in their own units (HU, MR intensities, 0..1). Two equal
    constant slices give 1.0. Needs both sides >= 11 pixels (the window).
    """
    x, y = _pair(a, b, "ssim")
    if min(x.shape) < SSIM_MIN_SIDE:
        raise ValueError(
            f"ssim needs slices of at least {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE} pixels "
            f"(its Gaussian window), got {x.shape}"
        )
    data_range = max(x.max(), y.max()) - min(x.min(), y.min())
    if data_range == 0:
        return 1.0
    try:
        from skimage.metrics import structural_similarity
    except ImportError as err:  # an optional dependency: the [curation] extra
        raise ImportError('ssim needs scikit-image: pip install "medfm[curation]"') from err
    value = structural_similarity(
        x,
        y,
        data_range=data_range,
        gaussian_weights=True,
        sigma=SSIM_SIGMA,
        use_sample_covariance=False,
    )
    return float(value)


def normalized_mi(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Mutual information of two slices from their joint histogram, normalised to [0, 1] as
    ``2 I(a; b) / (H(a) + H(b))`` (the arithmetic-mean NMI of scikit-learn's
    ``normalized_mutual_info_score``; 1 for identical slices, 0 for independent ones).

    The paper compared mutual information between slices (an information-theoretic measure)
    as a redundancy criterion; :func:`medfm.curation.reduce.consecutive_reduce` applies it.

    Each slice is cut into ``bins`` equal bins over its own range, exactly as
    ``np.histogram2d(a, b, bins)`` does (same edges, same searchsorted, last edge closed), but
    the joint counts come from one ``np.bincount``, several times faster than ``histogram2d``
    for one slice pair. scikit-image's ``normalized_mutual_information`` is Studholme's
    ``(H(a) + H(b)) / H(a, b)`` in [1, 2]: a different scale, hence not used. Two constant
    slices (no entropy at all) count as identical: 1.0.
    """
    if int(bins) != bins or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    x, y = _pair(a, b, "normalized_mi")
    ia, ib = _bin_indices(x.ravel(), int(bins)), _bin_indices(y.ravel(), int(bins))
    joint = np.bincount(ia * bins + ib, minlength=bins * bins).astype(np.float64) / ia.size
    h_a = _entropy(joint.reshape(bins, bins).sum(axis=1))
    h_b = _entropy(joint.reshape(bins, bins).sum(axis=0))
    if h_a + h_b == 0.0:
        return 1.0
    mutual = h_a + h_b - _entropy(joint)
    return float(np.clip(2.0 * mutual / (h_a + h_b), 0.0, 1.0))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (or arrays, flattened), in [-1, 1].

    The paper compared the similarity of deep embeddings of slices as a redundancy measure;
    :func:`medfm.curation.reduce.greedy_similarity_reduce` and
    :func:`medfm.curation.index.dedup_embeddings` apply it to whole volumes and datasets.
    A zero vector has no direction: its similarity to anything, itself included, is 0.0 (as
    the L2-normalised inner product of the index gives it).
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"cosine needs vectors of one length, got {x.size} and {y.size}")
    norms = np.linalg.norm(x) * np.linalg.norm(y)
    if norms == 0.0:
        return 0.0
    return float(np.clip(np.dot(x, y) / norms, -1.0, 1.0))


def _pair(a: np.ndarray, b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"{name} needs two non-empty 2D slices of one shape: {x.shape}, {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"{name}: the slices hold NaN or Inf values")
    return x, y


def _bin_indices(values: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each value as ``np.histogram2d`` assigns it (``histogramdd``'s rule)."""
    low, high = values.min(), values.max()
    if low == high:  # numpy widens a constant range by 0.5 each way: all in the middle bin
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = bins - 1
    return index


def _entropy(probabilities: np.ndarray) -> float:
    p = probabilities[probabilities > 0]
    return float(-(p * np.log(p)).sum())
