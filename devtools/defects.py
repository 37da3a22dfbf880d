"""Known defect classes, put back into the daemon on purpose, to show that the fleet simulation's
invariants catch each of them (``python -m devtools.fleet --defect NAME`` must fail).

Each defect patches the daemon's own code for the duration of a ``with`` block, the way a
regression would change it: an invariant that no defect can break would check nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from daemon import execute
from daemon.aws import clock
from daemon.jobs import frame as job_frame
from daemon.jobs import reclaim as reclaim_job
from daemon.model import Liveness
from daemon.plan import guards, reclaim

__all__ = ["DEFECTS", "inject"]


@contextlib.contextmanager
def _patched(target: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, old)


@contextlib.contextmanager
def _local_clock() -> Iterator[None]:
    """Staleness judged on the host's clock as read when the run starts (issue: a clock far
    ahead at the start and stepped back before the first request passes the clock guard)."""

    def init(
        self: clock.RunClock,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        original(self, monotonic, wall) if wall is not None else original(self, monotonic)
        self._start = (self._wall(), self._monotonic())  # type: ignore[attr-defined]

    def now(self: clock.RunClock) -> datetime:
        wall, mono = self._start  # type: ignore[attr-defined]
        return wall + timedelta(seconds=self._monotonic() - mono)  # type: ignore[no-any-return]

    def both(self: clock.RunClock) -> tuple[datetime | None, datetime]:
        moment = now(self)
        return moment, moment

    original = clock.RunClock.__init__
    with (
        _patched(clock.RunClock, "__init__", init),
        _patched(clock.RunClock, "now", now),
        _patched(clock.RunClock, "both", both),
    ):
        yield


@contextlib.contextmanager
def _index_budget() -> Iterator[None]:
    """The budget counts only what the tagging index shows marked and DescribeKey confirmed
    (a peer's mark not indexed yet, or a failed DescribeKey, frees budget)."""
    original = guards.spent

    def spent(snapshot: Any, now: datetime, policy: Any) -> list[Any]:
        return [
            key
            for key in original(snapshot, now, policy)
            if key.tags.get("spire-active") == "false" and key.meta is not None
        ]

    with _patched(guards, "spent", spent):
        yield


@contextlib.contextmanager
def _no_restore_rule() -> Iterator[None]:
    """Every mark on an Enabled key is taken for an interrupted reclaim, however old."""
    original = reclaim_job.reclaim_policy
    with _patched(
        reclaim_job,
        "reclaim_policy",
        lambda s: replace(original(s), mark_window=timedelta(days=3650)),
    ):
        yield


@contextlib.contextmanager
def _no_probe() -> Iterator[None]:
    """The refresh job stamps without asking the SPIRE server whether it is alive."""

    async def alive(self: job_frame.Context) -> Liveness:
        return Liveness(True, "assumed")

    with _patched(job_frame.Context, "spire_liveness", alive):
        yield


#: name -> (what the defect is, the patch)
DEFECTS: dict[str, tuple[str, Callable[[], contextlib.AbstractContextManager[None]]]] = {
    "no-reread": (
        "marks without reading the key's tags again from KMS (the tagging index lags)",
        lambda: _patched(execute, "confirm", lambda action, tags, protect: None),
    ),
    "local-clock": ("judges staleness on the host's clock at the start of a run", _local_clock),
    "index-budget": ("counts the budget from the tagging index alone", _index_budget),
    "no-restore-rule": (
        "completes every mark, however old (re-deletes restored keys)",
        _no_restore_rule,
    ),
    "no-probe": ("stamps without probing the SPIRE server", _no_probe),
    "no-budget": (
        "no max_reclaims budget",
        lambda: _patched(reclaim, "GUARDS", (guards.clock_guard, guards.blast_radius_guard)),
    ),
    "any-key-shape": (
        "reclaims keys SPIRE could not have made (any usage, spec, multi-Region)",
        lambda: _patched(reclaim, "not_spire_shaped", lambda meta: None),
    ),
}


def inject(name: str) -> contextlib.AbstractContextManager[None]:
    """The patch that puts defect ``name`` back."""
    return DEFECTS[name][1]()
