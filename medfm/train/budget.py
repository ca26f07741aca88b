"""Fit the learning-rate schedule to ``train.max_minutes``, so a time-budgeted run ends its
cosine decay whatever the machine's speed.

Without it, ``max_minutes`` only cuts a run short: a 300-step cosine stopped by the clock at
step 167 (a machine half as fast) leaves the LR near half its peak, and the encoder is taken
from the middle of training. Budgeted training (Li et al. 2020, *Budgeted Training: Rethinking
Deep Neural Network Training Under Resource Constraints*, ICLR) shows that a schedule decayed
to the end of the budget beats a longer schedule cut off, at every budget.

How: the first step of an invocation warms up (allocations, thread pools) and is not timed;
the next :data:`PROBE_STEPS` steps measure seconds per step, averaged over processes so every
rank plans the same; the schedule's ``total`` becomes the steps that fit in
``MARGIN * max_minutes`` (never more than ``train.max_steps``) and the run ends there. The plan
is made once and saved with the scheduler in the checkpoint, so a run resumed with the same
budget keeps it and stays exact (one resumed with another ``max_steps`` or ``max_minutes``
plans again, from the new config's schedule, as a run resumed with a larger ``max_steps``
always has); ``max_minutes`` still stops a run that turns out slower than planned. Monitors and
checkpoints after the probe are what :data:`MARGIN` leaves 3 % of the budget for (with
``checkpoint_every`` or ``monitor_every`` under 10 they fall in the probe, and fewer steps are
planned). A plan shorter than ``warmup_steps`` never decays; it is warned about.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from medfm.train import distributed as D
from medfm.train.optim import WarmupCosine, budget_of

log = logging.getLogger(__name__)

PROBE_STEPS = 10
MARGIN = 0.97


def steps_that_fit(
    done: int, elapsed: float, seconds_per_step: float, max_minutes: float, max_steps: int
) -> int:
    """The step at which a run that has done ``done`` steps in ``elapsed`` seconds, at
    ``seconds_per_step`` from now on, is still inside ``MARGIN * max_minutes``; at least
    ``done + 1`` and at most ``max_steps``."""
    remaining = MARGIN * 60.0 * max_minutes - elapsed
    more = int(remaining // max(seconds_per_step, 1e-9))
    return min(int(max_steps), max(done + 1, done + more))


class BudgetPlanner:
    """Watches the first steps of an invocation and fits ``schedule.total`` once (see the
    module docstring). ``observe(done, elapsed)`` after each step; ``end`` is the step the run
    stops at."""

    def __init__(
        self, schedule: WarmupCosine, train_cfg: DictConfig, start: int, info: D.DistInfo
    ) -> None:
        self.schedule, self.info, self.start = schedule, info, start
        self.budget = budget_of(train_cfg)
        self.max_minutes = self.budget[1]  # None without max_minutes or with fitting off
        self.timed_from: tuple[int, float] | None = None
        self.active = bool(self.max_minutes) and schedule.budget is None

    @property
    def end(self) -> int:
        """The schedule's last step: ``max_steps``, or a plan that is never past it."""
        return int(self.schedule.total)

    def observe(self, done: int, elapsed: float) -> int | None:
        """Record step ``done`` at ``elapsed`` seconds; the planned last step when it is fixed
        at this step, else None."""
        if not self.active:
            return None
        if done == self.start + 1:
            self.timed_from = (done, elapsed)
            return None
        if self.timed_from is None or done < self.timed_from[0] + PROBE_STEPS:
            return None
        first, then = self.timed_from
        per_step = D.mean_across((elapsed - then) / (done - first), self.info)
        elapsed = D.mean_across(elapsed, self.info)
        planned = steps_that_fit(done, elapsed, per_step, float(self.max_minutes), self.end)
        self.schedule.total, self.schedule.budget, self.active = planned, self.budget, False
        if planned <= self.schedule.warmup:
            log.warning(
                "Only %d steps fit in train.max_minutes=%s, no more than train.warmup_steps=%d: "
                "the LR will not decay; raise max_minutes or lower warmup_steps",
                planned,
                self.max_minutes,
                self.schedule.warmup,
            )
        log.info(
            "train.max_minutes=%s: at %.2f s a step, the LR schedule now ends at step %d",
            self.max_minutes,
            per_step,
            planned,
        )
        return planned
