"""Running many AWS calls with a fixed pool of workers; work that may block, in a thread the
process does not wait for."""

from __future__ import annotations

import asyncio
import contextlib
import threading
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


async def in_daemon_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in a daemon thread: one stuck on a file (a FIFO, a hung network mount) never
    holds the process back when it stops, as the default executor's threads would."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be gone by now
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name="reload", daemon=True).start()
    return await future
