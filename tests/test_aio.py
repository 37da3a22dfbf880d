"""The worker pool that runs many AWS calls."""

from __future__ import annotations

import asyncio

import pytest

from daemon.aio import WORKERS, map_pooled


async def test_results_keep_the_order_of_the_items() -> None:
    async def slow_square(n: int) -> int:
        await asyncio.sleep(0.001 * (n % 3))
        return n * n

    assert await map_pooled(list(range(100)), slow_square) == [n * n for n in range(100)]


async def test_at_most_workers_calls_run_at_once() -> None:
    running = peak = 0

    async def call(_: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1

    await map_pooled(list(range(500)), call)
    assert peak == WORKERS


async def test_first_error_propagates_as_itself_and_stops_the_rest() -> None:
    started: list[int] = []

    async def call(n: int) -> None:
        started.append(n)
        await asyncio.sleep(0)
        if n == 3:
            raise KeyError(n)

    with pytest.raises(KeyError):
        await map_pooled(list(range(1000)), call)
    assert len(started) < 1000


async def test_no_items() -> None:
    async def never(_: int) -> int:
        raise AssertionError

    assert await map_pooled([], never) == []
