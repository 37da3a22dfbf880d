"""Every Prometheus metric the daemon exports, on an injected registry."""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from daemon import __version__
from daemon.aws.client import MUTATING_OPERATIONS
from daemon.model import (
    ActionKind,
    Anomaly,
    Job,
    JobName,
    KeyVerdict,
    Outcome,
    Refusal,
    RunReport,
    Verdict,
)

PREFIX = "spire_kms_reconciler_"
#: The states the refresh job reports (this server's keys); reclaim reports all the others.
REFRESH_STATES = (Verdict.SERVING, Verdict.SUPERSEDED, Verdict.LEGACY)
RECLAIM_STATES = tuple(v for v in Verdict if v not in REFRESH_STATES)
#: The key states each job reports in ``keys{state}``; a job not named here reports none.
_STATES: dict[JobName, tuple[Verdict, ...]] = {
    Job.REFRESH: REFRESH_STATES,
    Job.RECLAIM: RECLAIM_STATES,
}
_RUN_OUTCOMES = (Outcome.SUCCESS, Outcome.FAILURE, Outcome.REFUSED)
_ACTION_OUTCOMES = (Outcome.SUCCESS, Outcome.FAILURE, Outcome.SKIPPED, Outcome.PLANNED)
_AWS_OPERATIONS = sorted(
    {"GetResources", "ListAliases", "DescribeKey", "ListResourceTags", *MUTATING_OPERATIONS}
)
_AWS_OUTCOMES = ("success", "throttled", "denied", "not_found", "error")


class _Families:
    """Metric families on one registry, all named with :data:`PREFIX`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(PREFIX + name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(PREFIX + name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, *labels: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(PREFIX + name, doc, labels, registry=self.registry, buckets=buckets)


class Metrics:
    """The daemon's metrics; each test builds its own on a fresh registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, jobs: Iterable[JobName] = tuple(Job)
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        family = _Families(r)
        # No *_created series: they double every counter and no alert or panel reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        # process_resident_memory_bytes and friends: the unit and the pod cap the memory.
        ProcessCollector(registry=r)
        self.runs = family.counter(
            "runs",
            "Runs of each task by outcome (refused: a safety guard held).",
            "task",
            "outcome",
        )
        self.run_duration = family.histogram(
            "run_duration_seconds",
            "Wall time of one run.",
            "task",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.last_success = family.gauge(
            "last_success_timestamp_seconds",
            "Unix time at which the task last finished with outcome success (0: not since start).",
            "task",
        )
        self.last_run = family.gauge(
            "last_run_timestamp_seconds",
            "Unix time at which the task last finished, whatever its outcome.",
            "task",
        )
        self.keys = family.gauge(
            "keys",
            "Keys by state as the latest run left them: serving, superseded and legacy count "
            "this server's keys (refresh), the other states the trust domain's (reclaim).",
            "state",
        )
        self.anomalies = family.gauge(
            "anomalies",
            "Anomalies (malformed or future tags, superseded keys...) seen by the latest run "
            "of each task.",
            "task",
            "anomaly",
        )
        self.actions = family.counter(
            "actions", "Mutating actions by kind and outcome.", "action", "outcome"
        )
        self.aws_requests = family.counter(
            "aws_requests", "AWS API calls by operation and outcome.", "operation", "outcome"
        )
        self.reclaim_refused = family.counter(
            "reclaim_refused", "Reclaim runs a safety guard refused, by guard.", "guard"
        )
        self.permission_denied = family.gauge(
            "permission_denied",
            "1 while the task's latest run failed for a missing IAM permission.",
            "task",
        )
        self.spire_up = family.gauge(
            "spire_up",
            "1 when the latest probe of the local SPIRE server's health endpoint said alive (or "
            "assume_spire_alive is set), 0 otherwise; refresh writes nothing while it is 0.",
        )
        self.interval = family.gauge(
            "interval_seconds",
            "The configured interval of each enabled task (alerts compare ages with it).",
            "task",
        )
        self.build_info = family.gauge(
            "build_info", "The daemon's version; the value is always 1.", "version"
        )
        self.build_info.labels(__version__).set(1)
        for job in jobs:
            self.run_duration.labels(job)
            self.last_success.labels(job)
            self.last_run.labels(job)
            self.permission_denied.labels(job)
            for outcome in _RUN_OUTCOMES:
                self.runs.labels(job, outcome.value)
            for anomaly in Anomaly:
                self.anomalies.labels(job, anomaly.value)
        for refusal in Refusal:
            if refusal is not Refusal.SPIRE_NOT_ALIVE:
                self.reclaim_refused.labels(refusal.value)
        for verdict in Verdict:
            self.keys.labels(verdict.value)
        for kind in ActionKind:
            for outcome in _ACTION_OUTCOMES:
                self.actions.labels(kind.value, outcome.value)
        for operation in _AWS_OPERATIONS:
            for aws_outcome in _AWS_OUTCOMES:
                self.aws_requests.labels(operation, aws_outcome)

    def on_aws_call(self, operation: str, outcome: str) -> None:
        """Count one AWS call (subscribed to the AWS layer's call counter)."""
        self.aws_requests.labels(operation, outcome).inc()

    def set_intervals(self, intervals: Mapping[JobName, float | None]) -> None:
        """Export each task's interval in seconds; None (a disabled task) exports nothing."""
        for job, seconds in intervals.items():
            if seconds is None:
                with contextlib.suppress(KeyError):
                    self.interval.remove(job)
            else:
                self.interval.labels(job).set(seconds)

    def observe(self, report: RunReport, finished_at: float) -> None:
        """Record one finished run."""
        job = report.job
        outcome = report.outcome
        self.runs.labels(job, outcome.value).inc()
        self.run_duration.labels(job).observe(report.duration_seconds)
        self.last_run.labels(job).set(finished_at)
        if outcome is Outcome.SUCCESS:
            self.last_success.labels(job).set(finished_at)
        if report.job == Job.RECLAIM and outcome is Outcome.REFUSED and report.plan.refusal:
            self.reclaim_refused.labels(report.plan.refusal.value).inc()
        if report.spire is not None:
            self.spire_up.set(1 if report.spire.alive else 0)
        self.permission_denied.labels(job).set(1 if report.permission_denied else 0)
        done = Tally((r.action.kind.value, r.outcome.value) for r in report.results)
        for (kind, result_outcome), count in done.items():
            self.actions.labels(kind, result_outcome).inc(count)
        if report.error is not None or (not report.plan.verdicts and report.plan.refusal):
            return  # nothing was observed: keep the previous key and anomaly figures
        found = Tally(f.anomaly.value for f in report.plan.findings)
        for anomaly in Anomaly:
            self.anomalies.labels(job, anomaly.value).set(found.get(anomaly.value, 0))
        states = _STATES.get(report.job, ())
        left = Tally(state.value for state in states_after(report))
        for state in states:
            self.keys.labels(state.value).set(left.get(state.value, 0))


def states_after(report: RunReport) -> list[Verdict]:
    """Each key's state as the run left it: a verdict moved on by the actions that succeeded.

    A legacy key migrated now serves; a stale key marked and scheduled is reclaimed, one only
    marked is reclaiming. A dry run moves nothing.
    """
    done = {
        (r.action.arn, r.action.kind)
        for r in report.results
        if r.outcome is Outcome.SUCCESS and not report.dry_run
    }

    def after(verdict: KeyVerdict) -> Verdict:
        v = verdict.verdict
        if v is Verdict.LEGACY and (verdict.arn, ActionKind.MIGRATE) in done:
            return Verdict.SERVING
        if v in (Verdict.STALE, Verdict.RECLAIMING):
            if (verdict.arn, ActionKind.SCHEDULE_DELETION) in done:
                return Verdict.RECLAIMED
            if (verdict.arn, ActionKind.MARK_INACTIVE) in done:
                return Verdict.RECLAIMING
        return v

    return [after(v) for v in report.plan.verdicts]
