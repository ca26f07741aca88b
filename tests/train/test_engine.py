import numpy as np
import pytest
import torch

from medfm.config import load_config
from medfm.data.loader import batch_indices, in_memory_batches
from medfm.models.backbones import create_backbone
from medfm.ssl.objectives import build_objective
from medfm.train.checkpoint import CHECKPOINT, load_checkpoint
from medfm.train.engine import NonFiniteLossError, train

IMAGES = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def _setup(tmp_path, steps, **extra):
    overrides = [
        "model.depth=1",
        "data.image_size=16",
        f"train.max_steps={steps}",
        "train.batch_size=8",
        "train.checkpoint_every=3",
        "train.progress=false",
        "train.warmup_steps=2",
        f"out_dir={tmp_path}",
    ]
    cfg = load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])
    torch.manual_seed(0)
    return build_objective(create_backbone(cfg.model, 16, 1), cfg.ssl), cfg


def _get_batch(idx):
    return {"image": IMAGES[torch.as_tensor(idx)]}


def _run(objective, get_batch, cfg, out_dir):
    batches = in_memory_batches(get_batch, 24, 8, int(cfg.seed), int(cfg.train.max_steps))
    return train(objective, batches, cfg, out_dir)


def test_batch_indices_cover_each_epoch_once_and_repeat_for_a_seed():
    epoch = np.concatenate([batch_indices(s, 24, 8, seed=1) for s in range(3)])
    assert sorted(epoch) == list(range(24))
    assert np.array_equal(batch_indices(4, 24, 8, 1), batch_indices(4, 24, 8, 1))
    assert not np.array_equal(batch_indices(3, 24, 8, 1), batch_indices(0, 24, 8, 1))


def test_loss_decreases_and_checkpoint_written(tmp_path):
    objective, cfg = _setup(tmp_path, 12, **{"train.lr": 3e-3})
    first = objective(_get_batch(np.arange(24)))["loss"].item()
    result = _run(objective, _get_batch, cfg, tmp_path)
    assert result.steps == 12
    assert objective(_get_batch(np.arange(24)))["loss"].item() < first
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] == 12
    assert not list(tmp_path.glob(".*.tmp"))


class KilledError(Exception):
    pass


def test_resume_after_a_kill_gives_bitwise_identical_weights(tmp_path):
    straight, cfg = _setup(tmp_path / "a", 6)
    _run(straight, _get_batch, cfg, tmp_path / "a")

    def dies_at_step_4(idx):
        dies_at_step_4.calls += 1
        if dies_at_step_4.calls == 5:
            raise KilledError  # after the step-3 checkpoint, in the middle of step 4
        return _get_batch(idx)

    dies_at_step_4.calls = 0
    first, cfg_b = _setup(tmp_path / "b", 6)
    with pytest.raises(KilledError):
        _run(first, dies_at_step_4, cfg_b, tmp_path / "b")
    torch.manual_seed(123)  # a fresh process would start from another RNG state
    resumed, cfg_c = _setup(tmp_path / "b", 6)
    result = _run(resumed, _get_batch, cfg_c, tmp_path / "b")
    assert result.resumed_from == 3
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_non_finite_loss_names_step_and_checkpoint(tmp_path):
    objective, cfg = _setup(tmp_path, 6)

    def poisoned(idx):
        batch = _get_batch(idx)
        if poisoned.calls == 4:
            batch["image"] = batch["image"] * float("nan")
        poisoned.calls += 1
        return batch

    poisoned.calls = 0
    with pytest.raises(NonFiniteLossError, match=r"step 4.*checkpoint\.pt \(step 3\)"):
        _run(objective, poisoned, cfg, tmp_path)


@pytest.mark.slow
def test_compile_trains_a_contrastive_objective_and_keeps_the_weight_names(tmp_path):
    """``train.compile`` compiles the encoder's blocks: SimCLR's views draw per-sample seeds
    with NumPy, which a compiled objective could not trace."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    objective, cfg = _setup(tmp_path / "c", 3, **{"ssl.objective": "simclr", "train.compile": True})
    plain, _ = _setup(tmp_path / "p", 3, **{"ssl.objective": "simclr"})
    result = _run(objective, _get_batch, cfg, tmp_path / "c")
    assert result.steps == 3 and np.isfinite(result.final_loss)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did compile the blocks
    assert objective.encoder.blocks[0]._compiled_call_impl is not None
    trained = load_checkpoint(tmp_path / "c" / CHECKPOINT)["model"]
    assert set(trained) == set(plain.state_dict())  # no _orig_mod. prefixes
    plain.load_state_dict(trained)
    batch = {**_get_batch(np.arange(8)), "sample_seed": torch.arange(8)}
    objective.eval(), plain.eval()
    with torch.no_grad():  # the compiled blocks compute what the eager ones do
        torch.testing.assert_close(
            objective(batch)["loss"], plain(batch)["loss"], rtol=1e-4, atol=1e-5
        )
