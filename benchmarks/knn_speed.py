"""Exact cosine kNN speed and memory (medfm.features.neighbours), as ratios measured in one run.

1. Throughput of the exact search on a subset (default n=50,000, d=384, k=10), for the torch
   backend and, when installed, faiss, each without and with groups (patients of 20 samples):
   pairwise-similarity FLOP/s = 2 n^2 d / wall time, over the fp32 matmul rate of this machine
   measured in the same run (medfm.train.flops.matmul_rate). Target: >= 50 %.
2. Peak memory the search adds above the embeddings, measured in a fresh process per run
   (the kernel's resident-set high-water mark, reset before the search).
3. Wall time for 1,000,000 x 384, EXTRAPOLATED two ways unless --full runs the real thing
   (about 1 h per configuration on 2 CPU cores): from the subset by n^2 scaling, and from
   --probe query rows searched against all 1,000,000 samples, scaled linearly in rows (this
   one sees the memory traffic of the full-size search, with its peak memory).

    python benchmarks/knn_speed.py                # about 2 minutes on 2 cores
    python benchmarks/knn_speed.py --n 20000      # quicker
    python benchmarks/knn_speed.py --full         # measure 1M x 384 instead of extrapolating
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np
import torch

from medfm.features.neighbours import BLOCK_BYTES, faiss_available, knn_search
from medfm.train.flops import matmul_rate

FULL_N = 1_000_000


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM of this process to its current RSS
        return True
    except OSError:
        return False


def _run(n: int, d: int, k: int, backend: str, group_size: int, n_queries, queue) -> None:
    """In a fresh process: make the data, warm up, then time one search and read its peak."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen).numpy()
    groups = None if group_size <= 1 else np.arange(n) // group_size
    knn_search(x[:2000], k, None if groups is None else groups[:2000], backend=backend)
    queries = None if n_queries is None else np.arange(n_queries)
    reset = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    idx, _ = knn_search(x, k, groups, backend=backend, queries=queries)
    seconds = time.perf_counter() - start
    extra = (_status_kib("VmHWM") - before) / 1024 if reset else float("nan")
    queue.put((seconds, extra, idx))


def measure(n: int, d: int, k: int, backend: str, group_size: int, n_queries=None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(n, d, k, backend, group_size, n_queries, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="subset size that is measured")
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--group-size", type=int, default=20, help="samples per patient")
    parser.add_argument("--probe", type=int, default=4096, help="query rows at n=1M (0: skip)")
    parser.add_argument("--full", action="store_true", help=f"measure n={FULL_N:,} instead")
    args = parser.parse_args()
    n = FULL_N if args.full else args.n
    peak = matmul_rate(torch.device("cpu"), size=1024, seconds=1.0)
    backends = ["torch"] + (["faiss"] if faiss_available() else [])
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
        f"faiss {'installed' if 'faiss' in backends else 'not installed (pip install faiss-cpu)'}"
    )
    print(f"fp32 matmul rate (1024^3, this run): {peak / 1e9:8.1f} GFLOP/s")
    print(
        f"exact cosine kNN, n={n:,} d={args.d} k={args.k}; flops = 2 n^2 d = "
        f"{2 * n * n * args.d / 1e12:.2f} TFLOP"
    )
    label = "1M time (measured)" if args.full else "1M time (EXTRAPOLATED, n^2)"
    print(
        f"{'backend':8} {'groups':>7} {'wall s':>8} {'GFLOP/s':>8} {'of matmul':>10} "
        f"{'peak extra MiB':>15} {label:>28}"
    )
    results = {}
    for backend in backends:
        for group_size in (1, args.group_size):
            seconds, extra, idx = measure(n, args.d, args.k, backend, group_size)
            results[backend, group_size] = idx
            rate = 2 * n * n * args.d / seconds
            full = seconds * (FULL_N / n) ** 2
            groups = "none" if group_size <= 1 else f"{group_size}/pt"
            print(
                f"{backend:8} {groups:>7} {seconds:8.2f} {rate / 1e9:8.1f} {rate / peak:10.1%} "
                f"{extra:15.0f} {full / 3600:25.2f} h"
            )
    if "faiss" in backends:
        for group_size in (1, args.group_size):
            same = (results["faiss", group_size] == results["torch", group_size]).all(1).mean()
            print(f"faiss vs torch, groups of {group_size}: identical neighbour rows {same:.4%}")
    if args.probe and not args.full:
        print(
            f"probe: {args.probe:,} query rows against all {FULL_N:,} x {args.d} samples "
            "(1M time EXTRAPOLATED linearly in rows; peak includes the normalised copy)"
        )
        for backend in backends:
            seconds, extra, _ = measure(FULL_N, args.d, args.k, backend, 1, args.probe)
            rate = 2 * args.probe * FULL_N * args.d / seconds
            full = seconds * FULL_N / args.probe
            print(
                f"{backend:8} {'none':>7} {seconds:8.2f} {rate / 1e9:8.1f} {rate / peak:10.1%} "
                f"{extra:15.0f} {full / 3600:25.2f} h"
            )
    data_gib = FULL_N * args.d * 4 / 2**30
    print(
        f"memory at n={FULL_N:,}: embeddings {data_gib:.2f} GiB + normalised float32 copy "
        f"{data_gib:.2f} GiB (made in place when the input is not float32) + torch similarity "
        f"tile <= {BLOCK_BYTES / 2**20:.0f} MiB; faiss: (chunk x candidates) results and its "
        "BLAS blocks"
    )
    print("target: >= 50 % of the fp32 matmul rate")


if __name__ == "__main__":
    main()
