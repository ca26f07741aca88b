"""Checkpoints: RNG states (CUDA's faked here: the tests run without a GPU) and safe loading
(``weights_only=True``; old or tampered files are refused, never run)."""

import os
import random
import shlex

import numpy as np
import pytest
import torch

from medfm.config import ConfigError, load_config
from medfm.data.loader import in_memory_batches
from medfm.models.backbones import create_backbone
from medfm.ssl.objectives import build_objective
from medfm.train import checkpoint as C
from medfm.train.engine import train


def _fake_cuda(monkeypatch, n_devices: int, restored: dict):
    states = [torch.full((16,), i + 1, dtype=torch.uint8) for i in range(n_devices)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_devices)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda s, device: restored.__setitem__(device, s.clone())
    )
    return states


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    C.save_checkpoint(tmp_path / "c.pt", {"rng": C.rng_state()})
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(6), np.random.seed(6), random.seed(6)
    C.set_rng_state(C.load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_cuda_rng_states_are_saved_and_restored(monkeypatch, tmp_path):
    restored: dict[int, torch.Tensor] = {}
    states = _fake_cuda(monkeypatch, 2, restored)
    state = C.rng_state()
    assert [torch.equal(a, b) for a, b in zip(state["cuda"], states, strict=True)] == [True, True]
    C.save_checkpoint(tmp_path / "c.pt", {"rng": [state]})
    C.set_rng_state(C.load_checkpoint(tmp_path / "c.pt")["rng"][0])
    assert sorted(restored) == [0, 1]
    assert all(torch.equal(restored[i], states[i]) for i in range(2))
    # the CUDA states are plain uint8 tensors: a weights_only load accepts them
    torch.save({"cuda": state["cuda"]}, tmp_path / "cuda.pt")
    loaded = torch.load(tmp_path / "cuda.pt", weights_only=True)["cuda"]
    assert all(torch.equal(a, b) for a, b in zip(loaded, states, strict=True))


def test_cuda_states_restore_what_fits_and_cpu_checkpoints_still_load(monkeypatch):
    restored: dict[int, torch.Tensor] = {}
    saved = C.rng_state() | {"cuda": [torch.zeros(16, dtype=torch.uint8)] * 3}
    _fake_cuda(monkeypatch, 2, restored)
    C.set_rng_state(saved)  # saved on 3 GPUs, resumed on 2
    assert sorted(restored) == [0, 1]
    restored.clear()
    C.set_rng_state({k: v for k, v in saved.items() if k != "cuda"})  # a CPU checkpoint
    assert restored == {}


def _draws() -> tuple:
    """Numbers from every RNG a resume restores, including the cached Gaussians of numpy and
    Python (``has_gauss`` / ``gauss_next``)."""
    return (
        torch.rand(4),
        torch.randn(3),
        np.random.rand(4),
        np.random.randn(3),
        random.random(),
        random.gauss(0.0, 1.0),
        random.getrandbits(64),
    )


def _assert_same_draws(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])
    assert a[4:] == b[4:]


def test_python_numpy_and_torch_rng_states_round_trip_exactly(tmp_path):
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    np.random.randn(1), random.gauss(0.0, 1.0)  # leave a cached Gaussian in numpy and Python
    assert np.random.get_state()[3] == 1 and random.getstate()[2] is not None
    saved_numpy, saved_python = np.random.get_state(), random.getstate()
    C.save_checkpoint(tmp_path / "c.pt", {"rng": [C.rng_state()]})
    expected = _draws()

    torch.manual_seed(12), np.random.seed(12), random.seed(12)
    assert not np.array_equal(np.random.get_state()[1], saved_numpy[1])
    C.set_rng_state(C.load_checkpoint(tmp_path / "c.pt")["rng"][0])
    restored_numpy = np.random.get_state()
    assert restored_numpy[0] == saved_numpy[0] and restored_numpy[1].dtype == np.uint32
    assert np.array_equal(restored_numpy[1], saved_numpy[1])
    assert restored_numpy[2:] == saved_numpy[2:]
    assert random.getstate() == saved_python
    _assert_same_draws(_draws(), expected)


def test_rng_state_holds_only_tensors_and_plain_values():
    state = C.rng_state()
    assert state["torch"].dtype == torch.uint8
    numpy_state = state["numpy"]
    assert numpy_state["bit_generator"] == "MT19937"
    assert numpy_state["keys"].dtype == torch.int64 and numpy_state["keys"].shape == (624,)
    assert int(numpy_state["keys"].min()) >= 0 and int(numpy_state["keys"].max()) < 2**32
    assert type(numpy_state["pos"]) is int and type(numpy_state["has_gauss"]) is int
    assert type(numpy_state["cached_gaussian"]) is float
    python_state = state["python"]
    assert type(python_state["state"]) is list and len(python_state["state"]) == 625
    assert all(type(x) is int for x in python_state["state"])


class _Evil:
    """Pickles to a call of ``os.system``: loading it with ``weights_only=False`` runs it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + shlex.quote(str(self.marker)),))


def test_a_tampered_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    path, marker = tmp_path / "checkpoint.pt", tmp_path / "pwned"
    torch.save({"model": {}, "evil": _Evil(marker)}, path)
    with pytest.raises(C.UnsafeCheckpointError) as err:
        C.load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "posix.system" in message
    assert "older medfm or holds code" in message and "Delete it to start over" in message
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_of_an_older_medfm_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "checkpoint.pt"
    old_rng = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # a tuple holding an ndarray: not weights_only-safe
        "python": random.getstate(),
    }
    torch.save({"step": 3, "model": {}, "rng": [old_rng]}, path)
    with pytest.raises(C.UnsafeCheckpointError, match="resume with the older medfm") as err:
        C.load_checkpoint(path)
    assert str(path) in str(err.value) and "numpy" in str(err.value)
    assert isinstance(err.value, ConfigError)  # the CLI reports it as an error, exit status 2


def _tiny_run(out_dir, steps: int = 4):
    cfg = load_config(
        None,
        [
            "model.depth=1",
            "data.image_size=16",
            f"train.max_steps={steps}",
            "train.batch_size=8",
            "train.checkpoint_every=2",
            "train.monitor_every=2",
            "train.progress=false",
            "train.warmup_steps=2",
            f"out_dir={out_dir}",
        ],
    )
    torch.manual_seed(0)
    objective = build_objective(create_backbone(cfg.model, 16, 1), cfg.ssl)
    images = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    batches = in_memory_batches(
        lambda idx: {"image": images[torch.as_tensor(idx)]},
        24,
        8,
        int(cfg.seed),
        int(cfg.train.max_steps),
    )
    return train(objective, batches, cfg, out_dir, monitor=lambda step: {"knn_acc": step / 10})


def test_checkpoints_the_engine_writes_load_with_weights_only(monkeypatch, tmp_path):
    _tiny_run(tmp_path)
    direct = torch.load(tmp_path / C.CHECKPOINT, weights_only=True)
    assert direct["step"] == 4 and direct["best"] == {"metric": "knn_acc", "value": 0.4, "step": 4}
    assert set(direct) == {"step", "model", "optimizer", "scheduler", "rng", "best", "tracking"}
    assert direct["tracking"] is None  # tracking off: no MLflow run to continue
    assert len(direct["rng"]) == 1 and direct["rng"][0]["numpy"]["keys"].dtype == torch.int64
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["step"] == 4 and best["value"] == 0.4
    assert best["model"].keys() == direct["model"].keys()

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    loaded = C.load_checkpoint(tmp_path / C.CHECKPOINT)
    assert calls == [True]
    for name, value in direct["model"].items():
        assert torch.equal(loaded["model"][name], value), name


def test_training_refuses_to_resume_from_an_unsafe_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "model": {}, "evil": _Evil(marker)}, tmp_path / C.CHECKPOINT)
    before = (tmp_path / C.CHECKPOINT).read_bytes()
    with pytest.raises(C.UnsafeCheckpointError, match="Delete it to start over"):
        _tiny_run(tmp_path)
    assert not marker.exists()
    assert (tmp_path / C.CHECKPOINT).read_bytes() == before  # left for the user to decide
