"""The AWS calls a process and each of its runs made, by operation and outcome."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

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
    """Counts AWS calls by operation and outcome."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
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

    def by_operation(self) -> dict[str, int]:
        """Return the number of calls per operation, whatever their outcome."""
        totals: Counter[str] = Counter()
        for (operation, _), count in self.calls.items():
            totals[operation] += count
        return dict(totals)
