"""AWS's clock, as this run's own responses tell it.

Every AWS response carries a ``Date`` header: AWS's time when it answered. Paired with the
monotonic clock at the moment the answer arrived, it gives AWS's time at any later instant of the
run, whatever the host's wall clock does meanwhile (an NTP step, a wrong clock at boot). Only the
responses of the current run count (one :class:`RunClock` per run, found through a context
variable, as the per-run call counter is): the monotonic clock stands still while the host is
suspended, so an old observation would drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta

__all__ = ["RunClock", "current_run_clock", "run_clock"]


class RunClock:
    """AWS's time carried forward on the monotonic clock from the Date headers seen so far.

    A Date header has whole seconds (the fraction is cut off), so each one says AWS's time was
    at least that; the largest estimate over all responses is kept.
    """

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._base: tuple[datetime, float] | None = None  # (AWS's time, monotonic then)
        self.responses = 0

    def observe(self, aws_date: datetime) -> None:
        """Record one response's Date, as of now on the monotonic clock."""
        at = self._monotonic()
        self.responses += 1
        if self._base is None or aws_date - self._estimate(at) > timedelta(0):
            self._base = (aws_date, at)

    def _estimate(self, at: float) -> datetime:
        assert self._base is not None
        seen, then = self._base
        return seen + timedelta(seconds=at - then)

    def now(self) -> datetime | None:
        """AWS's time now, or None when no response of this run carried a Date."""
        if self._base is None:
            return None
        return self._estimate(self._monotonic())

    def wall(self) -> datetime:
        """The local wall clock."""
        return self._wall()

    def both(self) -> tuple[datetime | None, datetime]:
        """AWS's time and the local wall clock, read at the same instant."""
        aws = self.now()
        return aws, self._wall()


_RUN_CLOCK: ContextVar[RunClock | None] = ContextVar("run_clock", default=None)


def current_run_clock() -> RunClock | None:
    """The clock of the run this code is part of, if any."""
    return _RUN_CLOCK.get()


@contextmanager
def run_clock(clock: RunClock | None = None) -> Iterator[RunClock]:
    """Give this context (one run and the tasks it spawns) a clock of its own."""
    clock = clock or RunClock()
    token = _RUN_CLOCK.set(clock)
    try:
        yield clock
    finally:
        _RUN_CLOCK.reset(token)
