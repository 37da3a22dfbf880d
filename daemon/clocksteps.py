"""Keep the schedule on time when the host's wall clock is stepped.

APScheduler's triggers speak wall-clock time: a step back of an hour (NTP correcting a clock that
ran ahead, a VM restored from a snapshot) would hold every job back by that hour, a step forward
would fire jobs early. This watcher compares the wall clock with the monotonic clock every few
seconds; when their difference jumps, it moves every job's next run by the same amount, so that
due times stay where the monotonic clock put them. A job is never late by more than one period of
the watcher past its due time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog

log = structlog.get_logger("daemon.clocksteps")

#: How often the wall clock is compared with the monotonic one.
PERIOD = 5.0
#: A jump smaller than this is drift or scheduling noise, not a step.
THRESHOLD = timedelta(seconds=2)


class ClockStepWatcher:
    """Shift a scheduler's jobs by every step of the wall clock."""

    def __init__(
        self,
        scheduler: Any,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        period: float = PERIOD,
    ) -> None:
        self._scheduler = scheduler
        self._wall = wall
        self._monotonic = monotonic
        self._period = period
        self._offset = wall() - monotonic()

    def check(self) -> timedelta | None:
        """Compare the clocks now; on a step, shift the jobs and return the step."""
        offset = self._wall() - self._monotonic()
        step = timedelta(seconds=offset - self._offset)
        self._offset = offset
        if abs(step) < THRESHOLD:
            return None
        moved = 0
        for job in self._scheduler.get_jobs():
            if job.next_run_time is not None:
                job.modify(next_run_time=job.next_run_time + step)
                moved += 1
        log.warning(
            "clock_step",
            step_seconds=round(step.total_seconds(), 3),
            jobs_moved=moved,
            detail="the wall clock jumped; due times were moved with it, to stay on schedule",
        )
        self._scheduler.wakeup()
        return step

    async def watch(self, stop: asyncio.Event) -> None:
        """Check every period until ``stop``."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._period)
            except TimeoutError:
                self.check()
