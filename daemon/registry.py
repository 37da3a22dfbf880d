"""The jobs the daemon runs, in one place: what the scheduler, ``once`` and the metrics iterate.

A job is its name, the settings section that schedules it (its ``interval`` and ``jitter``;
``enabled`` and ``start_delay`` where the section has them) and the coroutine that runs it once.
Adding a job is a module with that coroutine, its settings section (in
:class:`~daemon.settings.sections.JobSections`), and one entry here (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from daemon.jobs import Context, reclaim_once, refresh_once
from daemon.model import Job, JobName, RunReport
from daemon.settings import Settings


class Schedule(Protocol):
    """What a job's settings section says about when it runs."""

    @property
    def interval(self) -> timedelta: ...

    @property
    def jitter(self) -> float: ...


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of the registry."""

    job: JobName
    #: The settings section (a TOML table of the same name) that schedules the job.
    section: Callable[[Settings], Schedule]
    #: Runs the job once and reports.
    once: Callable[[Context], Awaitable[RunReport]]

    @property
    def name(self) -> str:
        return self.job

    def enabled(self, settings: Settings) -> bool:
        return bool(getattr(self.section(settings), "enabled", True))

    def interval(self, settings: Settings) -> timedelta:
        return self.section(settings).interval

    def jitter(self, settings: Settings) -> float:
        return self.section(settings).jitter

    def start_delay(self, settings: Settings) -> timedelta:
        """How long after the daemon starts the first run comes (0: at once)."""
        delay = getattr(self.section(settings), "start_delay", timedelta(0))
        return delay if isinstance(delay, timedelta) else timedelta(0)

    def timing(self, settings: Settings) -> tuple[bool, timedelta, float]:
        """What a reload compares: enabled, interval, jitter."""
        return self.enabled(settings), self.interval(settings), self.jitter(settings)


#: Every job, in the order ``once`` runs them: refresh first, so that a key this server still
#: uses is stamped before any reclaim looks at the trust domain.
JOBS: tuple[JobSpec, ...] = (
    JobSpec(Job.REFRESH, lambda s: s.refresh, refresh_once),
    JobSpec(Job.RECLAIM, lambda s: s.reclaim, reclaim_once),
)


def spec(job: JobName) -> JobSpec:
    """The registry's entry for ``job``."""
    return next(s for s in JOBS if s.job == job)
