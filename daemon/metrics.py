"""Every Prometheus metric the daemon exports, on an injected registry."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon import __version__
from daemon.aws.client import MUTATING_OPERATIONS
from daemon.model import ActionKind, Anomaly, Job, Outcome, RunReport, Verdict

PREFIX = "spire_kms_reconciler_"
_RUN_OUTCOMES = (Outcome.SUCCESS, Outcome.FAILURE, Outcome.REFUSED)
_ACTION_OUTCOMES = (Outcome.SUCCESS, Outcome.FAILURE, Outcome.SKIPPED)
_AWS_OPERATIONS = sorted({"GetResources", "ListAliases", "DescribeKey", *MUTATING_OPERATIONS})
_AWS_OUTCOMES = ("success", "throttled", "denied", "not_found", "error")


class Metrics:
    """The daemon's metrics; each test builds its own on a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            PREFIX + "runs",
            "Job runs by outcome (refused: a safety guard held).",
            ["job", "outcome"],
            registry=r,
        )
        self.run_duration = Histogram(
            PREFIX + "run_duration_seconds",
            "Wall time of one job run.",
            ["job"],
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "Unix time at which the job last finished with outcome success.",
            ["job"],
            registry=r,
        )
        self.last_run = Gauge(
            PREFIX + "last_run_timestamp_seconds",
            "Unix time at which the job last finished, whatever its outcome.",
            ["job"],
            registry=r,
        )
        self.keys = Gauge(
            PREFIX + "keys",
            "Keys of the trust domain by the reclaim job's latest verdict.",
            ["state"],
            registry=r,
        )
        self.anomalies = Gauge(
            PREFIX + "anomalies",
            "Anomalies (malformed or future tags, superseded keys...) seen by the latest run "
            "of each job.",
            ["job", "anomaly"],
            registry=r,
        )
        self.actions = Counter(
            PREFIX + "actions",
            "Mutating actions by kind and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.aws_requests = Counter(
            PREFIX + "aws_requests",
            "AWS API calls by operation and outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.reclaim_refused = Counter(
            PREFIX + "reclaim_refused",
            "Reclaim runs a safety guard refused.",
            registry=r,
        )
        self.permission_denied = Gauge(
            PREFIX + "permission_denied",
            "1 while the job's latest run failed for a missing IAM permission.",
            ["job"],
            registry=r,
        )
        self.build_info = Gauge(
            PREFIX + "build_info",
            "The daemon's version; the value is always 1.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(__version__).set(1)
        for job in Job:
            self.run_duration.labels(job.value)
            self.last_success.labels(job.value)
            self.last_run.labels(job.value)
            self.permission_denied.labels(job.value)
            for outcome in _RUN_OUTCOMES:
                self.runs.labels(job.value, outcome.value)
            for anomaly in Anomaly:
                self.anomalies.labels(job.value, anomaly.value)
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

    def observe(self, report: RunReport, finished_at: float) -> None:
        """Record one finished run."""
        job = report.job.value
        outcome = report.outcome
        self.runs.labels(job, outcome.value).inc()
        self.run_duration.labels(job).observe(report.duration_seconds)
        self.last_run.labels(job).set(finished_at)
        if outcome is Outcome.SUCCESS:
            self.last_success.labels(job).set(finished_at)
        if outcome is Outcome.REFUSED:
            self.reclaim_refused.inc()
        self.permission_denied.labels(job).set(1 if report.permission_denied else 0)
        done = Tally((r.action.kind.value, r.outcome.value) for r in report.results)
        for (kind, result_outcome), count in done.items():
            self.actions.labels(kind, result_outcome).inc(count)
        if report.error is not None:
            return  # nothing was observed: keep the previous key and anomaly figures
        found = Tally(f.anomaly.value for f in report.plan.findings)
        for anomaly in Anomaly:
            self.anomalies.labels(job, anomaly.value).set(found.get(anomaly.value, 0))
        if report.job is Job.RECLAIM:
            verdicts = Tally(v.verdict.value for v in report.plan.verdicts)
            for verdict in Verdict:
                self.keys.labels(verdict.value).set(verdicts.get(verdict.value, 0))
