"""When a failed run is tried again, and the report of a run that crashed."""

from __future__ import annotations

from datetime import datetime, timedelta

from daemon.model import JobName, Outcome, Plan, Refusal, RunReport

#: First retry of a failed run, doubled on each further failure, capped below.
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(minutes=30)
#: A refresh refused because the SPIRE server is not alive is asked again at least this often
#: (a retry is one local HTTP GET and no AWS call): a server back from a long outage carries
#: old stamps until its keys are stamped again, and peers may reclaim them meanwhile.
SPIRE_DOWN_RETRY_CAP = timedelta(minutes=1)


def retry_delay(report: RunReport, failures_in_a_row: int, interval: timedelta) -> timedelta | None:
    """When to run a job again after ``report``, the ``failures_in_a_row``-th failure in a row
    (counting this one); None: the next tick is soon enough.

    Failures, and refreshes the SPIRE server's death refused, are retried with a backoff that
    doubles from :data:`RETRY_BASE`; success, a guard's refusal and a missing permission are not.
    A retry due at half the interval or later is left to the next tick.
    """
    if not needs_retry(report):
        return None
    cap = SPIRE_DOWN_RETRY_CAP if report.plan.refusal is Refusal.SPIRE_NOT_ALIVE else RETRY_CAP
    # The exponent is bounded: a server down for weeks fails tens of thousands of times in a row.
    doublings = min(max(0, failures_in_a_row - 1), 16)
    delay = min(RETRY_BASE * 2**doublings, cap)
    return None if delay >= interval / 2 else delay


def needs_retry(report: RunReport) -> bool:
    """Whether ``report`` counts as a failure in a row: a failed run, or a refresh the SPIRE
    server's death refused; not success, a guard's refusal or a missing permission."""
    spire_down = report.plan.refusal is Refusal.SPIRE_NOT_ALIVE
    if report.permission_denied:
        return False
    return report.outcome is Outcome.FAILURE or spire_down


def crashed_report(job: JobName, started: datetime, exc: Exception) -> RunReport:
    """A report for a run that raised unexpectedly."""
    return RunReport(
        job=job,
        plan=Plan(job),
        results=(),
        dry_run=False,
        started_at=started,
        duration_seconds=0.0,
        aws_calls={},
        error=f"{type(exc).__name__}: {exc}",
    )
