"""medfm.data.loader: step-indexed batches that do not depend on ranks or workers."""

import numpy as np
import pytest
import torch

from medfm.data.loader import (
    PatchDataset,
    StepBatchSampler,
    batch_indices,
    collate_patches,
    sample_seeds,
    step_loader,
)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=10):
        self.images = torch.arange(n * 6 * 6, dtype=torch.float32).reshape(n, 1, 6, 6)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "id": f"p{i}"}


def test_ranks_split_each_global_batch_into_contiguous_shares():
    one = list(StepBatchSampler(10, 4, seed=3, start=0, stop=5))
    two = [list(StepBatchSampler(10, 4, 3, 0, 5, rank=r, world=2)) for r in (0, 1)]
    for step, items in enumerate(one):
        assert items == two[0][step] + two[1][step]
        assert [i for i, _ in items] == batch_indices(step, 10, 4, 3).tolist()
        assert [s for _, s in items] == sample_seeds(step, 4, 3).tolist()
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        next(iter(StepBatchSampler(10, 4, 3, 0, 5, rank=0, world=3)))


def test_a_sampler_started_at_step_s_continues_the_uninterrupted_sequence():
    full = list(StepBatchSampler(10, 4, seed=1, start=0, stop=8))
    assert list(StepBatchSampler(10, 4, seed=1, start=5, stop=8)) == full[5:]
    assert len(StepBatchSampler(10, 4, 1, 5, 8)) == 3


def test_patches_and_extras_per_sample():
    data = PatchDataset(_Images(), (4, 4), per_volume=3, extras={"age": torch.arange(10.0)})
    item = data[(2, 99)]
    assert item["image"].shape == (3, 1, 4, 4) and item["age"].tolist() == [2.0, 2.0, 2.0]
    assert len(set(item["sample_seed"].tolist())) == 3
    torch.testing.assert_close(data[(2, 99)]["image"], item["image"])
    batch = collate_patches([data[(0, 1)], data[(1, 2)]])
    assert batch["image"].shape == (6, 1, 4, 4) and batch["age"].tolist() == [0, 0, 0, 1, 1, 1]
    whole = PatchDataset(_Images())[(4, 7)]
    assert whole["image"].shape == (1, 1, 6, 6) and whole["sample_seed"].tolist() == [7]


def test_two_workers_deliver_the_same_batches_as_none():
    data = PatchDataset(_Images(), (3, 3), per_volume=2)
    runs = [
        list(step_loader(data, StepBatchSampler(10, 4, 0, 0, 6), num_workers=w)) for w in (0, 2)
    ]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(
            a["sample_seed"], b["sample_seed"]
        )
    assert len(runs[0]) == 6 and np.unique([len(b["image"]) for b in runs[0]]).tolist() == [8]


def test_augment_steps_are_keyed_by_the_patch_seed_and_checked_at_load():
    from omegaconf import OmegaConf

    from medfm.data.transforms.augment import augment_steps
    from medfm.data.transforms.preprocess import PreprocessError

    cfg = OmegaConf.create({"augment": [{"name": "field_affine", "strength": 2.0}]})
    data = PatchDataset(_Images(), (6, 6), per_volume=2, augment=augment_steps(cfg))
    plain = PatchDataset(_Images(), (6, 6), per_volume=2)
    a, b = data[(3, 5)]["image"], data[(3, 5)]["image"]
    assert torch.equal(a, b) and not torch.equal(a, plain[(3, 5)]["image"])
    assert not torch.equal(a, data[(3, 6)]["image"])
    bad = OmegaConf.create({"augment": [{"name": "stian"}]})
    with pytest.raises(PreprocessError, match=r"data.augment\[0\] 'stian'.*did you mean 'stain'"):
        augment_steps(bad)


def test_grouped_batches_hold_one_group_and_cover_each_epoch():
    from medfm.data.loader import grouped_batch_indices

    groups = np.array([2] * 6 + [3] * 4)
    epoch = [grouped_batch_indices(s, groups, 2, seed=0) for s in range(5)]  # 3 + 2 batches
    assert all(len(np.unique(groups[b])) == 1 for b in epoch)
    assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    assert {int(groups[b][0]) for b in epoch} == {2, 3}
    again = [grouped_batch_indices(s, groups, 2, seed=0) for s in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(epoch, again, strict=True))
