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


class _Clock:
    """Stands in for the training meter's clock: each batch fetched takes one second."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def batches(self, die_at: int | None = None):
        def get_batch(idx):
            self.now += 1.0
            if die_at is not None and self.now == die_at:
                raise KilledError
            return _get_batch(idx)

        return get_batch


def _timed(tmp_path, monkeypatch, **extra):
    """A 1000-step recipe under a one-minute budget, on a clock where a step takes 1 s."""
    import medfm.train.throughput as throughput

    clock = _Clock()
    monkeypatch.setattr(throughput, "time", clock)
    budget = {
        "train.max_minutes": 1,
        "train.checkpoint_every": 20,
        "train.min_lr": 1e-5,
        "train.lr": 1e-3,
    }
    objective, cfg = _setup(tmp_path, 1000, **{**budget, **extra})
    return objective, cfg, clock


def _lr_after(out_dir) -> tuple[int, float, dict]:
    state = load_checkpoint(out_dir / CHECKPOINT)
    return state["step"], state["optimizer"]["param_groups"][0]["lr"], state["scheduler"]


def test_the_schedule_is_fitted_to_max_minutes_and_ends_its_decay(tmp_path, monkeypatch):
    """Steps 2-11 take 1 s each; at step 11, 11 s in, 0.97 * 60 s - 11 s = 47.2 s leave room for
    47 more steps: the cosine is refitted to end at step 58 and the run stops there at min_lr."""
    objective, cfg, clock = _timed(tmp_path / "fit", monkeypatch)
    result = _run(objective, clock.batches(), cfg, tmp_path / "fit")
    step, lr, sched = _lr_after(tmp_path / "fit")
    assert result.steps == step == 58
    assert sched["lr_lambdas"][0]["total"] == 58
    assert sched["lr_lambdas"][0]["budget"] == [1000, 1.0]
    assert lr == pytest.approx(1e-5)

    objective, cfg, clock = _timed(
        tmp_path / "cut", monkeypatch, **{"train.fit_schedule_to_minutes": False}
    )
    result = _run(objective, clock.batches(), cfg, tmp_path / "cut")
    step, lr, _ = _lr_after(tmp_path / "cut")
    assert result.steps == step == 61  # the first step past 60 s
    assert lr > 0.9e-3  # cut off 61 steps into a 1000-step cosine: near the peak


def test_a_fitted_run_resumes_exactly_and_a_finished_one_does_nothing(tmp_path, monkeypatch):
    straight, cfg, clock = _timed(tmp_path / "a", monkeypatch)
    _run(straight, clock.batches(), cfg, tmp_path / "a")

    first, cfg_b, clock = _timed(tmp_path / "b", monkeypatch)
    with pytest.raises(KilledError):  # in step 43, after the step-40 checkpoint
        _run(first, clock.batches(die_at=43), cfg_b, tmp_path / "b")
    torch.manual_seed(123)
    resumed, cfg_c, clock = _timed(tmp_path / "b", monkeypatch)
    result = _run(resumed, clock.batches(), cfg_c, tmp_path / "b")
    assert (result.resumed_from, result.steps) == (40, 58)  # the saved plan, not a new one
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name

    again, cfg_d, clock = _timed(tmp_path / "a", monkeypatch)
    result = _run(again, clock.batches(), cfg_d, tmp_path / "a")
    assert (result.resumed_from, result.steps, clock.now) == (58, 58, 0.0)


def test_a_fitted_run_resumed_with_a_new_budget_plans_again(tmp_path, monkeypatch):
    """Finished at step 58 under one minute; rerun under two, it times steps 60-69 and at step
    69, 11 s into this invocation, fits 0.97 * 120 s - 11 s = 105.4 s: 105 more steps."""
    objective, cfg, clock = _timed(tmp_path, monkeypatch)
    _run(objective, clock.batches(), cfg, tmp_path)
    longer, cfg_b, clock = _timed(tmp_path, monkeypatch, **{"train.max_minutes": 2})
    result = _run(longer, clock.batches(), cfg_b, tmp_path)
    step, lr, sched = _lr_after(tmp_path)
    assert (result.resumed_from, result.steps, step) == (58, 174, 174)
    assert sched["lr_lambdas"][0]["budget"] == [1000, 2.0]
    assert lr == pytest.approx(1e-5)
