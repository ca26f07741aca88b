"""Speed of DICOM ingestion and of the on-disk dataset cache, each beside a reference run with it.

The machine is noisy, so every speed is printed beside a reference measured in the same run, on
the same files, and the ratio between them is the number to compare across machines. Steps:

1. Writes ``--slices`` uncompressed 512x512 int16 CT slices (series of ``--per-series`` slices,
   with geometry, rescale and patient tags) into one temporary folder; file names are shuffled,
   so name order is not slice order.
2. Header scan: ``read_slice_header`` on every file against plain
   ``pydicom.dcmread(path, stop_before_pixels=True)`` (headers/s). pydicom converts a value only
   when it is read, and the reference reads none, so a ratio below 1 is expected here.
3. Decoding: ``decode_slice`` on every slice against ``pydicom.dcmread(path).pixel_array``
   (slices/s, single-threaded, so per core); then the whole ``ingest`` from start to finish,
   against the same pydicom reference.
4. Dataset cache: ``--images`` single-slice 256x256 CT DICOMs are ingested, and one epoch of
   ``build_dataset`` (image_size 64) is timed with ``data.cache=none``, then with
   ``data.cache=persistent`` twice: the first epoch writes the cache, the second reads it.

Runs take the best of ``--repeats`` tries, with ours and the reference interleaved. The files have
just been written, so they are read from the page cache: this measures CPU work, not the disk.
Torch runs on one thread. Not part of the test run; about a minute on 2 CPU cores.

    python benchmarks/ingest_speed.py --slices 400
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import monai
import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medfm.config import load_config
from medfm.data.datasets import build_dataset
from medfm.data.ingestion.ingest import ingest
from medfm.data.sources.dicom_series import decode_slice, read_slice_header

TARGETS = {"headers": 1500.0, "decode": 400.0, "cache_speedup": 5.0}


def _ct_template() -> Dataset:
    """A CT slice header with the tags real exports carry (pixels and per-slice tags set later)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = "medfm-bench"
    ds.InstitutionName = "Bench Hospital"
    ds.PatientName = "Bench^Patient"
    ds.PatientBirthDate = "19700101"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    return ds


def write_ct_slices(folder: Path, n: int, per_series: int, size: int, seed: int) -> list[Path]:
    """Write ``n`` int16 CT slices (``size`` x ``size``) in series of ``per_series``; the file
    names are a random permutation, so listing the folder gives the slices out of order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2).astype(np.int16)
    names = rng.permutation(n)
    ds = _ct_template()
    ds.Rows = ds.Columns = size
    paths = []
    for k in range(n):
        series, index = divmod(k, per_series)
        if index == 0:
            ds.PatientID = f"BENCH{series:04d}"
            ds.StudyInstanceUID = generate_uid()
            ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-180.0, -180.0, 1.25 * index]
        noise = rng.integers(0, 64, (size, size), dtype=np.int16)
        ds.PixelData = (body * (1024 + 40) + noise).astype(np.int16).tobytes()
        path = folder / f"{names[k]:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return sorted(paths)


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, the functions interleaved."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _row(what: str, ours: float, ref: float | None, unit: str, target: float | None = None) -> str:
    ref_text = f"{ref:>10.0f}" if ref is not None else f"{'':>10}"
    ratio = f"{ours / ref:>8.2f}" if ref else f"{'':>8}"
    verdict = ""
    if target is not None:
        verdict = f"  target >= {target:g}: {'met' if ours >= target else 'NOT MET'}"
    return f"{what:<34}{ours:>10.0f}{ref_text}{ratio}  {unit}{verdict}"


def bench_dicom(work: Path, n: int, per_series: int, repeats: int) -> list[str]:
    """Header scan, decoding and full ingestion of ``n`` 512x512 CT slices."""
    start = time.perf_counter()
    paths = write_ct_slices(work / "ct", n, per_series, 512, seed=0)
    print(f"wrote {n} CT slices 512x512 int16 in {time.perf_counter() - start:.1f} s", flush=True)
    headers = [read_slice_header(p) for p in paths]  # warm-up, and the input to decode_slice
    runs = itertools.count()
    t = best_times(
        {
            "ours_headers": lambda: [read_slice_header(p) for p in paths],
            "ref_headers": lambda: [pydicom.dcmread(p, stop_before_pixels=True) for p in paths],
            "ours_decode": lambda: [decode_slice(h) for h in headers],
            "ref_decode": lambda: [pydicom.dcmread(p).pixel_array for p in paths],
            "ingest": lambda: ingest(
                [work / "ct"], work / f"ingest{next(runs)}", salt="bench", progress=False
            ),
        },
        repeats,
    )
    result = ingest([work / "ct"], work / "ingest_check", salt="bench", progress=False)
    if result.counts["accepted"] != n or result.counts["rows"] != -(-n // per_series):
        raise RuntimeError(f"ingest did not accept every slice: {result.counts}")
    return [
        _row(
            "header scan",
            n / t["ours_headers"],
            n / t["ref_headers"],
            "headers/s",
            TARGETS["headers"],
        ),
        _row(
            "decode (1 core)",
            n / t["ours_decode"],
            n / t["ref_decode"],
            "slices/s",
            TARGETS["decode"],
        ),
        _row("ingest end to end (1 core)", n / t["ingest"], n / t["ref_decode"], "slices/s"),
    ]


def _epoch(dataset) -> None:
    for i in range(len(dataset)):
        dataset[i]


def bench_cache(work: Path, n: int, repeats: int) -> list[str]:
    """One epoch of ``build_dataset`` uncached, then persistent (writing, then reading)."""
    write_ct_slices(work / "ct2d", n, 1, 256, seed=1)
    rows = ingest([work / "ct2d"], work / "ingest2d", salt="bench", progress=False).rows
    if len(rows) != n:
        raise RuntimeError(f"expected {n} manifest rows, got {len(rows)}")

    def config(cache: str):
        overrides = [
            "data.image_size=64",
            f"data.cache_dir={work / 'cache'}",
            "data.channels=1",
            "data.intensity_min=-1024",
            "data.intensity_max=2048",
            f"data.cache={cache}",
        ]
        return load_config(None, overrides).data

    uncached = build_dataset(rows, config("none"))
    persistent = build_dataset(rows, config("persistent"))
    _epoch(uncached)  # warm-up: imports, page cache
    start = time.perf_counter()
    _epoch(persistent)
    first = time.perf_counter() - start
    t = best_times(
        {"none": lambda: _epoch(uncached), "cached": lambda: _epoch(persistent)}, repeats
    )
    same = all(torch.equal(uncached[i]["image"], persistent[i]["image"]) for i in (0, n - 1))
    if not same:
        raise RuntimeError("cached and uncached images differ")
    return [
        _row("epoch, data.cache=none", n / t["none"], None, "images/s"),
        _row("epoch 1, persistent (writes cache)", n / first, n / t["none"], "images/s"),
        _row("epoch 2, persistent (from cache)", n / t["cached"], n / t["none"], "images/s"),
        f"{'cache speed-up (epoch 2 / none)':<34}{t['none'] / t['cached']:>28.1f}x"
        f"  target >= {TARGETS['cache_speedup']:g}x: "
        f"{'met' if t['none'] / t['cached'] >= TARGETS['cache_speedup'] else 'NOT MET'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=400, help="512x512 CT slices to write")
    parser.add_argument("--per-series", type=int, default=100, help="slices per series")
    parser.add_argument("--images", type=int, default=400, help="2D images for the cache test")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    parser.add_argument("--tmp-dir", default=None, help="where to write (default: system temp)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
    print(
        f"torch {torch.__version__}, pydicom {pydicom.__version__}, monai {monai.__version__}, "
        f"os.cpu_count()={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
        f"best of {args.repeats}"
    )
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="medfm-bench-") as tmp:
        work = Path(tmp)
        lines = bench_dicom(work, args.slices, args.per_series, args.repeats)
        lines += bench_cache(work, args.images, args.repeats)
    print(f"\n{'':<34}{'medfm':>10}{'reference':>10}{'ratio':>8}")
    print("\n".join(lines))
    print(
        "\nreferences: header scan = pydicom.dcmread(stop_before_pixels=True); decode and ingest ="
        " pydicom.dcmread(p).pixel_array;\ncache epochs = the data.cache=none epoch."
    )


if __name__ == "__main__":
    main()
