"""Running many AWS calls with a fixed pool of workers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Workers per batch; the AWS layer bounds the calls actually in flight.
WORKERS = 16


async def map_pooled(items: Sequence[T], call: Callable[[T], Awaitable[R]]) -> list[R]:
    """Return ``[await call(i) for i in items]``, running a few at a time, in order.

    A fixed pool of workers rather than one task per item: thousands of keys cost neither
    thousands of tasks in memory nor one long step that stalls the event loop. The first
    exception cancels the other workers and propagates as itself.
    """
    results: list[R | None] = [None] * len(items)
    cursor = iter(range(len(items)))

    async def worker() -> None:
        for index in cursor:
            results[index] = await call(items[index])

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(WORKERS, len(items))):
                group.create_task(worker())
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return results  # type: ignore[return-value]  # every slot was filled
