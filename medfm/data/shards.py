"""Shards: the preprocessed train split written once as WebDataset tar files, read back by index.

``medfm shard MANIFEST --config RECIPE --out DIR`` runs the recipe's deterministic
``data.preprocess`` on every train image and writes ``DIR/shard-000000.tar, ...`` in the
WebDataset layout (one ``<key>.image.npy`` + ``<key>.meta.json`` per sample, written by
``webdataset.ShardWriter``) and ``DIR/shards.json`` (sample count, shard files and the resolved
preprocessing). ``data.shards=DIR`` then pre-trains from them with no decoding or resampling.

Why WebDataset, read by index: both WebDataset and MosaicML Streaming store samples in shards
that copy and stream well; Streaming keeps exact resumption when node or worker counts change,
but its package pins ``numpy<2.2`` and pulls cloud SDKs. medfm gets the same guarantee another
way: batches are chosen by :class:`medfm.data.loader.StepBatchSampler` from (seed, step) alone,
and :class:`ShardDataset` reads any sample by its global index from a per-shard table of tar
member offsets (Python's ``tarfile``), so any number of workers or processes, and a resumed run,
read exactly the samples an uninterrupted single process would. The tar files stay plain
WebDataset shards, readable by ``webdataset.WebDataset`` for streaming consumers.

Object stores: ``DIR`` may be any fsspec URL (``s3://bucket/ct``, ``gs://...``, ``az://...``,
``file://...``; install the store's fsspec package, e.g. ``s3fs``). A sample is then one ranged
read of its tar member, so nothing is copied to local disk first. fsspec (a torch dependency)
is used rather than hand-written clients because it is what torch, Hugging Face datasets and
WebDataset's own ``gopen`` build on.

No source path enters a shard: keys are sample positions, and ``meta.json`` holds only the
manifest's pseudonymous ``id``.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import fsspec
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medfm.data.datasets import build_dataset
from medfm.data.transforms.preprocess import resolve_preprocess
from medfm.io import write_json

INDEX = "shards.json"


def _store(folder: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``folder`` (a local path or a URL) and its root path on it."""
    fs, root = fsspec.core.url_to_fs(str(folder))
    return fs, root.rstrip("/")


def _is_local(folder: str | Path) -> bool:
    return "://" not in str(folder) or str(folder).startswith("file://")


def write_shards(
    rows: Sequence[dict],
    data_cfg: DictConfig,
    out_dir: str | Path,
    per_shard: int = 1000,
    progress: bool = True,
) -> str | Path:
    """Preprocess ``rows`` with ``data.preprocess`` and write them as WebDataset shards to
    ``out_dir``, a local folder or an fsspec URL (written locally first, then uploaded)."""
    if _is_local(out_dir):
        return _write_local(rows, data_cfg, Path(_store(out_dir)[1]), per_shard, progress)
    fs, root = _store(out_dir)
    with tempfile.TemporaryDirectory(prefix="medfm-shards-") as tmp:
        local = _write_local(rows, data_cfg, Path(tmp), per_shard, progress)
        fs.makedirs(root, exist_ok=True)
        for path in sorted(local.iterdir()):
            fs.put_file(str(path), f"{root}/{path.name}")
    return out_dir


def _write_local(
    rows: Sequence[dict], data_cfg: DictConfig, out: Path, per_shard: int, progress: bool
) -> Path:
    try:
        import webdataset as wds
    except ImportError:
        raise ImportError('medfm shard needs webdataset: pip install "medfm[shards]"') from None
    out.mkdir(parents=True, exist_ok=True)
    images = build_dataset(rows, OmegaConf.merge(data_cfg, {"cache": "none"}), whole_image=False)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in tqdm(range(len(images)), desc="shards", unit="image", disable=not progress):
            image = torch.as_tensor(images[i]["image"]).numpy().astype(np.float32)
            meta = {"id": str(rows[i].get("id", "")), "index": i}
            sink.write({"__key__": f"{i:09d}", "image.npy": image, "meta.json": meta})
    files = sorted(p.name for p in out.glob("shard-*.tar"))
    index = {
        "samples": len(images),
        "per_shard": per_shard,
        "shards": files,
        "preprocess": resolve_preprocess(data_cfg),
        "channels": int(data_cfg.channels),
    }
    write_json(index, out / INDEX)
    return out


def read_index(folder: str | Path) -> dict:
    """``shards.json`` of ``folder`` (a local path or an fsspec URL)."""
    fs, root = _store(folder)
    if not fs.isfile(f"{root}/{INDEX}"):
        raise FileNotFoundError(
            f"data.shards={folder} has no {INDEX}; write shards with "
            "`medfm shard MANIFEST --out DIR`"
        )
    return json.loads(fs.cat_file(f"{root}/{INDEX}"))


class ShardDataset(Dataset):
    """``dataset[i]``: sample ``i`` of the shards in ``folder`` (``{"image", "id"}``), read by
    seeking to its tar member; member offsets are listed once per shard, on first use."""

    def __init__(self, folder: str | Path) -> None:
        self.folder, self.index = folder, read_index(folder)
        self.fs, self.root = _store(folder)
        self._offsets: dict[int, dict[str, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return int(self.index["samples"])

    def _members(self, shard: int) -> dict[str, tuple[int, int]]:
        if shard not in self._offsets:
            with self.fs.open(self._path(shard), "rb") as f, tarfile.open(fileobj=f) as tar:
                self._offsets[shard] = {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
        return self._offsets[shard]

    def _read(self, shard: int, name: str) -> bytes:
        try:
            offset, size = self._members(shard)[name]
        except KeyError:
            raise KeyError(
                f"{name} missing from {self.index['shards'][shard]}; rewrite the "
                "shards with `medfm shard`"
            ) from None
        return self.fs.cat_file(self._path(shard), start=offset, end=offset + size)

    def _path(self, shard: int) -> str:
        return f"{self.root}/{self.index['shards'][shard]}"

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} outside the {len(self)} samples of {self.folder}")
        shard, key = i // int(self.index["per_shard"]), f"{i:09d}"
        image = np.load(io.BytesIO(self._read(shard, f"{key}.image.npy")))
        meta = json.loads(self._read(shard, f"{key}.meta.json"))
        return {"image": torch.from_numpy(image), "id": meta["id"]}
