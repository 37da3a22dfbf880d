"""The jobs: each one a module (:mod:`~daemon.jobs.refresh`, :mod:`~daemon.jobs.reclaim`) whose
``*_once`` coroutine runs it once in the frame of :mod:`~daemon.jobs.frame` (observe, plan,
execute, one report and one summary event). :mod:`daemon.registry` lists them."""

from daemon.jobs.frame import (
    Context,
    Decided,
    JobBody,
    JobState,
    log_summary,
    run_once,
    summary_fields,
    utc_now,
)
from daemon.jobs.reclaim import reclaim_once, reclaim_policy
from daemon.jobs.refresh import refresh_once, refresh_policy

__all__ = [
    "Context",
    "Decided",
    "JobBody",
    "JobState",
    "log_summary",
    "reclaim_once",
    "reclaim_policy",
    "refresh_once",
    "refresh_policy",
    "run_once",
    "summary_fields",
    "utc_now",
]
