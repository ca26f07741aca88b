"""RNG states in checkpoints, including CUDA's (faked here: the tests run without a GPU)."""

import random

import numpy as np
import torch

from medfm.train import checkpoint as C


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
