"""Model-FLOP utilisation: FLOPs of one real step, counted by ``torch.utils.flop_counter``,
against this machine's matmul rate measured in the same process."""

from __future__ import annotations

import contextlib
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_rate(device: torch.device, size: int = 1024, seconds: float = 0.3) -> float:
    """Measured FLOP/s of square matmuls (fp32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device).manual_seed(0)  # never touch the run's RNG stream
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    a @ b  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * n / (time.perf_counter() - start)


class FlopMeter:
    """Counts one step's FLOPs (forward + backward) and turns steps/s into MFU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.step_flops: float | None = None
        self.peak: float | None = None

    @contextlib.contextmanager
    def count(self, active: bool):
        """Context around one step: when ``active``, count its FLOPs (``step_flops``) and read
        the machine's peak matmul rate for MFU."""
        if not active:
            yield
            return
        with FlopCounterMode(display=False) as counter:
            yield
        self.step_flops = float(counter.get_total_flops())
        self.peak = matmul_rate(self.device)

    def mfu(self, steps_per_second: float) -> float | None:
        """Achieved model FLOP/s over the measured matmul rate (None before counting)."""
        if not self.step_flops or not self.peak:
            return None
        return self.step_flops * steps_per_second / self.peak
