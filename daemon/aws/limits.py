"""Client-side rate limits: a token bucket per mutating operation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

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
