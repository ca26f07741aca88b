"""Training throughput: images/s, the data-wait fraction and MFU since the loop started."""

from __future__ import annotations

import time

from medfm.train.flops import FlopMeter


class Throughput:
    """Images/s, the data-wait fraction (share of wall time spent waiting for the loader) and
    MFU since the loop started."""

    def __init__(self, meter: FlopMeter, world_size: int) -> None:
        self.meter, self.world = meter, world_size
        self.t0, self.seen, self.wait, self.steps = time.perf_counter(), 0, 0.0, 0

    def add(self, images: int, waited: float) -> None:
        """Count one step's images and the seconds spent waiting for them."""
        self.seen, self.wait, self.steps = (
            self.seen + images * self.world,
            self.wait + waited,
            self.steps + 1,
        )

    def elapsed(self) -> float:
        """Seconds since the meter started."""
        return max(time.perf_counter() - self.t0, 1e-9)

    def summary(self) -> dict[str, float]:
        """images/s, the data-wait fraction and MFU so far."""
        elapsed = self.elapsed()
        return {
            "images_per_second": self.seen / elapsed,
            "data_wait": self.wait / elapsed,
            "mfu": self.meter.mfu(self.steps / elapsed),
        }
