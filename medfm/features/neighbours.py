"""Exact cosine k-nearest-neighbour search in bounded memory, with a torch and a faiss backend.

Used by the robustness index (de Jong et al. 2025, "Current Pathology Foundation Models are
unrobust to Medical Center Differences"; PathoROB, Kömen et al. 2025) and the robustness audit,
which need the exact neighbours of every sample, the sample itself and samples of its group (e.g.
the same patient) excluded, for up to ~1,000,000 x 384 embeddings.

Both backends return the same answer, defined as a full stable sort would give it: neighbours in
decreasing cosine similarity, ties going to the lower index. They get there by a candidate search:

1. take the ``K = k + margin`` (torch) or ``K = k + largest group + margin`` (faiss) most similar
   columns of each row, excluded samples masked (torch, tile by tile, top-K of each tile merged)
   or filtered out afterwards (faiss);
2. order the candidates by (similarity descending, index ascending) and keep the first ``k``;
3. a row whose ``k``-th similarity does not beat the best value left outside the candidates
   (a tie across the cut, e.g. duplicated tiles) is redone exactly from its full similarity row:
   everything above the ``k``-th value, then the lowest indices at that value.

Memory, besides the normalised float32 copy of the embeddings (``n * d * 4`` bytes; made in place
when the input needed converting anyway): torch computes ``(rows, cols)`` similarity tiles of at
most ``block_bytes`` (``rows <= chunk``), faiss keeps ``(chunk, K)`` results and its own small
BLAS blocks. Rows redone for ties take full ``(r, n)`` rows, ``r * n * 4 <= block_bytes``. So
memory is ``O(chunk * n)`` at worst, never ``O(n^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medfm.metrics.classification import per_sample

BACKENDS = ("auto", "torch", "faiss")
BLOCK_BYTES = 256 * 2**20  # one float32 similarity tile of the torch backend
MIN_TILE = 4096  # narrowest column tile of the torch backend (keeps its matmuls efficient)
MARGIN = 8  # extra candidates per row beyond k (and beyond the largest group, for faiss)
FAISS_MAX_CANDIDATES = 1024  # "auto" uses faiss only while k + largest group + margin fits
_FAISS_DATABASE_BS = 16384  # faiss's BLAS block over the database (default 1024 is slower)


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package (``pip install faiss-cpu``) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def as_embeddings(embeddings, name: str = "embeddings") -> np.ndarray:
    """``embeddings`` as a C-contiguous float32 ``(n, d)`` array; raises on NaN or Inf rows."""
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, n_features) array, got shape {x.shape}")
    bad = np.concatenate(
        [~np.isfinite(x[s : s + 65536]).all(axis=1) for s in range(0, len(x), 65536)] or [[]]
    )
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"{name} contain NaN or Inf in {len(rows)} rows (first: {rows[:5].tolist()}); "
            "drop or re-extract those samples before computing neighbours"
        )
    return x


@dataclass(frozen=True)
class _Groups:
    """Group codes ``(n,)`` with a CSR listing of members (``members[offsets[g]:offsets[g+1]]``)."""

    codes: torch.Tensor
    sizes: torch.Tensor
    offsets: torch.Tensor
    members: torch.Tensor
    labels: np.ndarray

    @classmethod
    def build(cls, groups, n: int) -> _Groups | None:
        groups = per_sample(groups, n, "groups", against="embeddings")
        if groups is None:
            return None
        labels, codes = np.unique(groups, return_inverse=True)
        codes = torch.as_tensor(codes.reshape(-1), dtype=torch.int64)
        sizes = torch.bincount(codes, minlength=len(labels))
        offsets = torch.zeros(len(labels) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(sizes, 0)
        members = torch.argsort(codes, stable=True)
        return cls(codes, sizes, offsets, members, labels)


def max_neighbours(n: int, groups: np.ndarray | None = None) -> int:
    """The largest ``k`` every sample can have: ``n - 1``, or ``n`` minus the largest group."""
    if groups is None:
        return n - 1
    return n - int(np.unique(np.asarray(groups), return_counts=True)[1].max())


def _check_k(k, n: int, groups: _Groups | None) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer number of neighbours")
    k = int(k)
    if k >= n:
        raise ValueError(f"k={k} must be smaller than the number of samples ({n}); lower k")
    if groups is not None:
        largest = int(torch.argmax(groups.sizes))
        size, name = int(groups.sizes[largest]), groups.labels[largest].item()
        if k > n - size:
            raise ValueError(
                f"k={k} exceeds the number of eligible neighbours (samples outside the same "
                f"group): group {name!r} has {size} of the {n} samples, leaving {n - size}; "
                f"lower k to at most {n - size}"
            )
    return k


def _normalize(x: np.ndarray, inplace: bool) -> torch.Tensor:
    t = torch.from_numpy(x)
    norms = torch.linalg.vector_norm(t, dim=1, keepdim=True).clamp_min(1e-12)
    return t.div_(norms) if inplace else t / norms


def _layout(n_queries: int, n: int, chunk: int, block_bytes: int) -> tuple[int, int]:
    """``(rows, cols)`` of the torch similarity tile: at most ``chunk`` rows, ``rows * cols * 4 <=
    block_bytes`` (unless a single row of ``MIN_TILE`` columns is already larger), as many
    columns as the budget allows so that the matmul stays efficient at any ``n``."""
    rows = max(1, min(chunk, n_queries))
    cols = min(n, max(MIN_TILE, block_bytes // (4 * rows)))
    return max(1, min(rows, block_bytes // (4 * cols))), cols


def _similarity_block(
    queries: torch.Tensor, x: torch.Tensor, col0: int, col1: int, out: torch.Tensor
) -> torch.Tensor:
    """Cosine similarities ``(len(queries), col1 - col0)`` of the normalised ``queries`` against
    samples ``col0:col1``, written into ``out``."""
    return torch.mm(queries, x[col0:col1].T, out=out[: len(queries), : col1 - col0])


class _Excluder:
    """Masks (to ``-inf``) each row's similarity to itself and to its group in any column tile.

    Same-group columns are listed once per row chunk as (row, column) pairs sorted by column, or,
    when that list would outgrow ``block_bytes``, compared densely per tile."""

    def __init__(self, rows: torch.Tensor, groups: _Groups | None, block_bytes: int) -> None:
        self.rows, self.groups, self.pairs = rows, groups, None
        if groups is None:
            return
        sizes = groups.sizes[groups.codes[rows]]
        total = int(sizes.sum())
        if total * 16 > block_bytes:
            return
        starts = torch.repeat_interleave(groups.offsets[groups.codes[rows]], sizes)
        first = torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
        cols, order = torch.sort(groups.members[starts + torch.arange(total) - first])
        self.pairs = (torch.repeat_interleave(torch.arange(len(rows)), sizes)[order], cols)

    def __call__(self, sims: torch.Tensor, col0: int, col1: int) -> None:
        inside = (self.rows >= col0) & (self.rows < col1)
        sims[torch.arange(len(self.rows))[inside], self.rows[inside] - col0] = -torch.inf
        if self.groups is None:
            return
        if self.pairs is None:
            codes = self.groups.codes
            sims.masked_fill_(codes[self.rows, None] == codes[None, col0:col1], -torch.inf)
            return
        local, cols = self.pairs
        lo, hi = torch.searchsorted(cols, torch.tensor([col0, col1])).tolist()
        sims[local[lo:hi], cols[lo:hi] - col0] = -torch.inf


def _exact_rows(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of each (masked) row by (similarity descending, index ascending), in ``O(n)``
    per row: all values above the ``k``-th, then the lowest indices equal to it."""
    kth = torch.topk(sims, k, dim=1).values[:, -1:]
    if torch.isinf(kth).any():  # _check_k rules this out; kept so a bug cannot return "-inf" rows
        raise RuntimeError("fewer than k eligible neighbours in an exact row")
    above = sims > kth
    tied = sims == kth
    need = k - above.sum(1, keepdim=True)
    take = above | (tied & (torch.cumsum(tied, 1, dtype=torch.int32) <= need))
    idx = take.nonzero()[:, 1].view(len(sims), k)  # ascending index in each row
    vals = sims.gather(1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return idx.gather(1, order), vals.gather(1, order)


def _finish(
    vals: torch.Tensor, idx: torch.Tensor, bound: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order candidates by (value descending, index ascending); keep ``k``. Also return the rows
    where the answer is not certain: the ``k``-th value does not beat ``bound``, the best value of
    any column outside the candidates."""
    by_index = torch.argsort(idx, dim=1, stable=True)
    idx, vals = idx.gather(1, by_index), vals.gather(1, by_index)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    unsure = (vals[:, -1] <= bound) | torch.isinf(vals[:, -1])
    return idx, vals, unsure


def _resolve(
    x: torch.Tensor, rows: torch.Tensor, k: int, groups: _Groups | None, block_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact neighbours of ``rows`` (any rows, any order) from their full similarity rows."""
    n = len(x)
    per = max(1, block_bytes // (4 * n))
    out_idx = torch.empty(len(rows), k, dtype=torch.int64)
    out_val = torch.empty(len(rows), k)
    buffer = torch.empty(min(per, len(rows)), n)
    for s in range(0, len(rows), per):
        part = rows[s : s + per]
        sims = torch.mm(x[part], x.T, out=buffer[: len(part)])
        _Excluder(part, groups, block_bytes)(sims, 0, n)
        out_idx[s : s + len(part)], out_val[s : s + len(part)] = _exact_rows(sims, k)
    return out_idx, out_val


def _torch_search(x, queries, k, groups, chunk, block_bytes, margin, out_idx, out_val) -> None:
    """Row chunks against column tiles: the top ``k + margin`` of each tile, merged across tiles,
    then ordered by (similarity, index); rows tied across the cut are redone exactly."""
    n = len(x)
    n_rows, n_cols = _layout(len(queries), n, chunk, block_bytes)
    n_cand = min(n, k + margin)
    buffer = torch.empty(n_rows, n_cols)
    for start in range(0, len(queries), n_rows):
        rows = queries[start : start + n_rows]
        query = x[rows]
        exclude = _Excluder(rows, groups, block_bytes)
        vals = idx = None
        for col0 in range(0, n, n_cols):
            col1 = min(col0 + n_cols, n)
            sims = _similarity_block(query, x, col0, col1, buffer)
            exclude(sims, col0, col1)
            tile_vals, tile_idx = torch.topk(sims, min(n_cand, col1 - col0), dim=1)
            tile_idx += col0
            if vals is None:
                vals, idx = tile_vals, tile_idx
                continue
            vals, idx = torch.cat([vals, tile_vals], 1), torch.cat([idx, tile_idx], 1)
            if vals.shape[1] > n_cand:
                vals, keep = torch.topk(vals, n_cand, dim=1)
                idx = idx.gather(1, keep)
        bound = vals.min(1).values if n_cand < n else torch.full((len(rows),), -torch.inf)
        idx, vals, unsure = _finish(vals, idx, bound, k)
        if unsure.any():
            redo = unsure.nonzero()[:, 0]
            idx[redo], vals[redo] = _resolve(x, rows[redo], k, groups, block_bytes)
        out_idx[start : start + len(rows)], out_val[start : start + len(rows)] = idx, vals


def _faiss_search(x, queries, k, groups, chunk, block_bytes, margin, out_idx, out_val) -> None:
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT
    n = len(x)
    largest = 1 if groups is None else int(groups.sizes.max())
    n_cand = min(n, k + largest + margin)
    xb = x.numpy()
    codes = None if groups is None else groups.codes
    old_bs = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = _FAISS_DATABASE_BS
    try:
        for start in range(0, len(queries), chunk):
            rows = queries[start : start + chunk]
            sims, found = faiss.knn(xb[rows.numpy()], xb, n_cand, metric)
            vals, idx = torch.from_numpy(sims), torch.from_numpy(found).to(torch.int64)
            bound = vals[:, -1].clone() if n_cand < n else torch.full((len(rows),), -torch.inf)
            excluded = idx == rows[:, None]
            if codes is not None:
                excluded |= codes[idx] == codes[rows, None]
            vals = vals.masked_fill(excluded, -torch.inf)
            idx, vals, unsure = _finish(vals, idx, bound, k)
            if unsure.any():
                redo = unsure.nonzero()[:, 0]
                idx[redo], vals[redo] = _resolve(x, rows[redo], k, groups, block_bytes)
            out_idx[start : start + len(rows)], out_val[start : start + len(rows)] = idx, vals
    finally:
        faiss.cvar.distance_compute_blas_database_bs = old_bs


def _check_queries(queries, n: int) -> torch.Tensor:
    if queries is None:
        return torch.arange(n)
    q = np.asarray(queries)
    if q.ndim != 1 or not (np.issubdtype(q.dtype, np.integer) or q.size == 0):
        raise ValueError(f"queries must be a 1-D array of sample indices, got shape {q.shape}")
    if q.size and (q.min() < 0 or q.max() >= n):
        raise ValueError(
            f"queries must index the {n} samples (0 to {n - 1}); got {q.min()}..{q.max()}"
        )
    return torch.as_tensor(q.astype(np.int64))


def _choose_backend(backend: str, k: int, groups: _Groups | None, margin: int) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: use one of {', '.join(map(repr, BACKENDS))}")
    if backend == "faiss" and not faiss_available():
        raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu (or medfm[faiss])")
    if backend != "auto":
        return backend
    if not faiss_available():
        return "torch"
    largest = 1 if groups is None else int(groups.sizes.max())
    return "faiss" if k + largest + margin <= FAISS_MAX_CANDIDATES else "torch"


def knn_search(
    embeddings: np.ndarray,
    k: int,
    groups: np.ndarray | None = None,
    *,
    chunk: int = 2048,
    backend: str = "auto",
    margin: int = MARGIN,
    block_bytes: int = BLOCK_BYTES,
    queries: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k nearest neighbours of every sample among the others.

    Args:
        embeddings: ``(n, d)`` features; converted to float32 and L2-normalised (cosine).
        k: neighbours per sample, ``1 <= k <= n - (size of the largest group)``.
        groups: optional ``(n,)`` labels (e.g. patient); samples sharing a sample's group are
            never its neighbours (nor is the sample itself).
        chunk: most query rows handled at once.
        backend: ``"torch"`` (row-chunked matmul + top-k), ``"faiss"`` (exhaustive
            inner-product search, as ``faiss.IndexFlatIP`` does, then group filtering), or
            ``"auto"``: faiss when installed and ``k + largest group + margin <= 1024``, else torch.
        margin: extra candidates per row; larger values make tie fallbacks rarer.
        block_bytes: cap on one torch similarity tile, ``rows * cols * 4`` bytes (and on the
            full rows of tie fallbacks, ``rows * n * 4``).
        queries: indices of the samples whose neighbours are wanted (default: all); their
            neighbours are still searched among all ``n`` samples.

    Returns:
        ``(indices, similarities)``: ``(len(queries), k)`` (by default ``(n, k)``) int64 and
        float32, neighbours in decreasing similarity with ties going to the lower index. Both
        backends return the same indices; their similarities may differ in the last float32
        digit (different matmul kernels), so a near-tie closer than that can order differently.

    Raises:
        ValueError: NaN/Inf embeddings (naming the rows), ``k`` not a positive integer, ``k >= n``
            or above the samples outside the largest group, mismatched ``groups``, bad
            ``queries``, ``chunk``, ``margin`` or ``backend``.
        ImportError: ``backend="faiss"`` without faiss installed.

    Example:
        >>> idx, sims = knn_search(features, k=10, groups=patient)  # (n, 10) each
    """
    x_np = as_embeddings(embeddings)
    n = len(x_np)
    group_info = _Groups.build(groups, n)
    k = _check_k(k, n, group_info)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk={chunk!r} must be a positive integer number of rows")
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin={margin!r} must be a non-negative integer")
    rows = _check_queries(queries, n)
    name = _choose_backend(backend, k, group_info, margin)
    owned = not (isinstance(embeddings, np.ndarray) and np.may_share_memory(x_np, embeddings))
    x = _normalize(x_np, inplace=owned)  # never writes into the caller's array
    out_idx = torch.empty(len(rows), k, dtype=torch.int64)
    out_val = torch.empty(len(rows), k)
    search = _faiss_search if name == "faiss" else _torch_search
    search(x, rows, k, group_info, int(chunk), int(block_bytes), int(margin), out_idx, out_val)
    return out_idx.numpy(), out_val.numpy()
