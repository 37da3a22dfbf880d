"""Client-side rate limits and the per-operation call counter."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta

_ROUNDING = 1e-9  # a sleep of exactly the deficit may refill a hair short of a whole token


class RateLimiter:
    """A token bucket: at most ``rate`` tokens a second, bursts of at most ``burst``.

    An acquisition of ``cost`` tokens waits for one token, then takes all ``cost`` (the bucket may
    go below zero): a call that does the work of twenty pays for twenty, and the calls after it
    wait until that is paid back. Over any stretch of ``seconds``, the acquisitions before the last
    take at most ``burst + rate * seconds`` tokens.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._burst = float(max(1, burst))
        self._tokens = self._burst
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self, cost: int = 1) -> None:
        """Wait until a token is available, then take ``cost`` tokens."""
        if cost < 1:
            raise ValueError("cost must be at least 1")
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= 1 - _ROUNDING:
                    self._tokens -= cost
                    return
                await self._sleep((1 - self._tokens) / self._rate)


Listener = Callable[[str, str], None]

_RUN_CALLS: ContextVar[Counter[tuple[str, str]] | None] = ContextVar("run_calls", default=None)


@contextmanager
def counting_calls() -> Iterator[Counter[tuple[str, str]]]:
    """Count the AWS calls made in this context (one run and the tasks it spawns) apart."""
    calls: Counter[tuple[str, str]] = Counter()
    token = _RUN_CALLS.set(calls)
    try:
        yield calls
    finally:
        _RUN_CALLS.reset(token)


class CallStats:
    """Counts AWS calls by operation and outcome, and remembers AWS's clock."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.skew: timedelta | None = None  # local clock minus AWS's, from the Date header
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(operation, outcome)`` for every call recorded from now on."""
        self._listeners.append(listener)

    def record(self, operation: str, outcome: str) -> None:
        """Count one call."""
        self.calls[(operation, outcome)] += 1
        run = _RUN_CALLS.get()
        if run is not None:
            run[(operation, outcome)] += 1
        for listener in self._listeners:
            listener(operation, outcome)

    def observe_date(self, aws_date: datetime, local: datetime) -> None:
        """Remember how far the local clock is from AWS's, as of one response."""
        self.skew = local - aws_date

    def by_operation(self) -> dict[str, int]:
        """Return the number of calls per operation, whatever their outcome."""
        totals: Counter[str] = Counter()
        for (operation, _), count in self.calls.items():
            totals[operation] += count
        return dict(totals)
