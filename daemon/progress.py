"""Progress of a run's writes: a ``progress`` log event every few seconds while a run stamps or
reclaims many keys, and a hook for a live line in a terminal."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import structlog

log = structlog.get_logger("daemon.progress")

#: Seconds between two ``progress`` events of one run.
EVERY = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where a run's writes stand."""

    job: str
    done: int
    total: int
    elapsed: float

    @property
    def left(self) -> int:
        return self.total - self.done

    @property
    def rate(self) -> float:
        """Actions finished per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before the first action finished)."""
        return self.left / self.rate if self.rate > 0 else None

    def line(self) -> str:
        eta = f", about {self.eta:.0f}s left" if self.eta is not None else ""
        return f"{self.job}: {self.done}/{self.total} actions, {self.rate:.1f}/s{eta}"


#: Called with each snapshot (the CLI draws a terminal line with it); may be None.
Listener = Callable[[Snapshot], None]


class Progress:
    """Counts one run's finished actions; see the module docstring."""

    def __init__(
        self,
        job: str,
        total: int,
        listener: Listener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self.total = total
        self.done = 0
        self._listener = listener
        self._clock = clock
        self._started = clock()
        self._last_event = self._started

    def snapshot(self) -> Snapshot:
        return Snapshot(self.job, self.done, self.total, self._clock() - self._started)

    def tick(self) -> None:
        """One more action finished (whatever its outcome)."""
        self.done += 1
        now = self._clock()
        if self._listener is not None:
            self._listener(self.snapshot())
        if now - self._last_event >= EVERY and self.done < self.total:
            self._last_event = now
            snap = self.snapshot()
            log.info(
                "progress",
                job=self.job,
                done=snap.done,
                left=snap.left,
                rate_per_second=round(snap.rate, 2),
                eta_seconds=round(snap.eta) if snap.eta is not None else None,
            )


_current: ContextVar[Progress | None] = ContextVar("progress", default=None)


@contextmanager
def tracking(job: str, total: int, listener: Listener | None = None) -> Iterator[Progress]:
    """Count the actions finished within the block (see :func:`tick`)."""
    progress = Progress(job, total, listener)
    token = _current.set(progress)
    try:
        yield progress
    finally:
        _current.reset(token)


def tick() -> None:
    """Count one finished action in the run being tracked, if any."""
    progress = _current.get()
    if progress is not None:
        progress.tick()
