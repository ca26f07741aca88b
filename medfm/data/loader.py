"""Step-indexed batches: which samples each training step sees, and a DataLoader that makes them.

Data order is a pure function of ``(seed, step)`` (:func:`batch_indices`) and every sample gets a
seed of its own from ``(seed, step, position)`` (:func:`sample_seeds`), which drives its random
patches (and, in the objective, its masks and views). A batch therefore does not depend on the
number of DataLoader workers or processes, and a run resumed at step ``s`` simply starts the
sampler at ``s``: the sampler's position is the checkpoint's step.

:class:`StepBatchSampler` yields this rank's share of each global batch; :func:`step_loader`
wraps it in a ``torch.utils.data.DataLoader`` (``data.num_workers`` worker processes, pinned
memory on CUDA, prefetching); :func:`in_memory_batches` does the same in-process for data that
is already a tensor (fine-tuning).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medfm.data.transforms.augment import AugmentStep, apply_augment
from medfm.data.transforms.patches import patch_seeds, random_patches

log = logging.getLogger(__name__)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of the ``step``-th batch: consecutive slices of a per-epoch seeded permutation."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[pos * batch_size : (pos + 1) * batch_size]


def grouped_batch_indices(step: int, groups: np.ndarray, batch_size: int, seed: int) -> np.ndarray:
    """Indices of the ``step``-th batch when every batch must come from one group (e.g. 2D or
    3D images, for a unified encoder trained on both, Uni4Eye): each epoch, every group's
    seeded permutation is cut into full batches, and the batches of all groups are shuffled
    together; a pure function of ``(seed, step)`` like :func:`batch_indices`."""
    labels = np.unique(groups)
    per_epoch = sum(max(1, int((groups == g).sum()) // batch_size) for g in labels)
    epoch, pos = divmod(step, per_epoch)
    batches = []
    for j, g in enumerate(labels):
        members = np.flatnonzero(groups == g)
        order = members[np.random.default_rng([seed, epoch, j]).permutation(len(members))]
        full = max(1, len(order) // batch_size)
        batches += [order[k * batch_size : (k + 1) * batch_size] for k in range(full)]
    shuffle = np.random.default_rng([seed, epoch, 99]).permutation(len(batches))
    return batches[shuffle[pos]]


def sample_seeds(step: int, batch_size: int, seed: int) -> np.ndarray:
    """One seed per position of the ``step``-th global batch (for per-sample randomness)."""
    return np.random.default_rng([seed, step, 7]).integers(0, 2**62, size=batch_size)


def rank_share(values: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (the global batch must divide evenly)."""
    if len(values) % world_size:
        raise ValueError(
            f"global batch {len(values)} is not divisible by {world_size} processes; "
            "change train.batch_size"
        )
    per = len(values) // world_size
    return values[rank * per : (rank + 1) * per]


class StepBatchSampler(Sampler):
    """For each step in ``[start, stop)``: this rank's ``(index, seed)`` pairs of the batch
    (with ``groups``, every batch from a single group: :func:`grouped_batch_indices`)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world: int = 1,
        groups: np.ndarray | None = None,
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self.groups = None if groups is None else np.asarray(groups)

    def step_items(self, step: int) -> list[tuple[int, int]]:
        """The ``(sample index, sample seed)`` pairs of step ``step`` on this rank."""
        if self.groups is not None:
            idx = grouped_batch_indices(step, self.groups, self.batch_size, self.seed)
        else:
            idx = batch_indices(step, self.n, self.batch_size, self.seed)
        seeds = sample_seeds(step, len(idx), self.seed)
        idx, seeds = (
            rank_share(idx, self.rank, self.world),
            rank_share(seeds, self.rank, self.world),
        )
        return [(int(i), int(s)) for i, s in zip(idx, seeds, strict=True)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.step_items(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class PatchDataset(Dataset):
    """``dataset[(index, seed)]``: ``samples_per_volume`` random patches of image ``index`` (or
    the whole image when ``size`` is None), each put through the ``augment`` steps
    (``data.augment``) from its own seed, with one seed per patch and per-row ``extras`` (e.g. a
    metadata column) repeated for each patch."""

    def __init__(
        self,
        images: Dataset,
        size: tuple[int, ...] | None = None,
        per_volume: int = 1,
        extras: Mapping[str, torch.Tensor] | None = None,
        augment: list[AugmentStep] | None = None,
    ) -> None:
        self.images, self.size, self.per_volume = images, size, per_volume
        self.extras, self.augment = dict(extras or {}), list(augment or [])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        sample = self.images[index]
        image = torch.as_tensor(sample["image"])
        n = self.per_volume if self.size is not None else 1
        if self.size is None:
            patches = image[None]
        else:
            patches = random_patches(image, self.size, n, seed, str(sample.get("id", index)))
        seeds = patch_seeds(seed, n)
        if self.augment:
            patches = torch.stack(
                [apply_augment(self.augment, p, s) for p, s in zip(patches, seeds, strict=True)]
            )
        out = {"image": patches, "sample_seed": torch.as_tensor(seeds)}
        for key, values in self.extras.items():
            out[key] = values[index].repeat(n)
        return out


def collate_patches(items: list[dict]) -> dict:
    """Concatenate the patches of a batch's samples along the batch axis."""
    return {key: torch.cat([item[key] for item in items]) for key in items[0]}


def step_loader(
    dataset: PatchDataset,
    sampler: StepBatchSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader:
    """A ``DataLoader`` over ``sampler``'s steps; workers do the decoding and preprocessing.
    More workers than this process may use CPUs are capped to that count (the batches do not
    depend on it)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if num_workers > (usable or 1):
        log.info("data.num_workers=%d capped to the %d CPUs available", num_workers, usable)
        num_workers = usable or 1
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": False} if num_workers else {}
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_patches,
        pin_memory=pin_memory,
        **extra,
    )


def in_memory_batches(
    get_batch: Callable[[np.ndarray], dict],
    n: int,
    batch_size: int,
    seed: int,
    stop: int,
    rank: int = 0,
    world: int = 1,
) -> Callable[[int], Iterator[dict]]:
    """``batches(start)`` for the engine over ``n`` in-memory samples served by ``get_batch``."""

    def batches(start: int) -> Iterator[dict]:
        for items in StepBatchSampler(n, batch_size, seed, start, stop, rank, world):
            batch = dict(get_batch(np.array([i for i, _ in items], dtype=np.int64)))
            batch["sample_seed"] = torch.as_tensor([s for _, s in items], dtype=torch.int64)
            yield batch

    return batches
