"""daemon.metrics: every figure the daemon exports, judged on a fresh registry per test.

Reports are crafted from daemon.model (no AWS); each assertion reads one sample back with
``registry.get_sample_value``, the way Prometheus would see it after a scrape.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from daemon import __version__
from daemon.metrics import Metrics
from daemon.model import (
    Action,
    ActionKind,
    ActionResult,
    Anomaly,
    Finding,
    Job,
    KeyVerdict,
    Liveness,
    Outcome,
    Plan,
    Refusal,
    RunReport,
    Verdict,
)

P = "spire_kms_reconciler_"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STARTED = datetime(2026, 1, 1, tzinfo=UTC)
RUN_OUTCOMES = ("success", "failure", "refused")
ACTION_OUTCOMES = ("success", "failure", "skipped", "planned")
AWS_OPERATIONS = (
    "GetResources",
    "ListAliases",
    "DescribeKey",
    "TagResource",
    "TagResources",
    "UpdateAlias",
    "ScheduleKeyDeletion",
)
AWS_OUTCOMES = ("success", "throttled", "denied", "not_found", "error")


def arn(n: int) -> str:
    return f"arn:aws:kms:us-east-1:123456789012:key/00000000-0000-4000-8000-{n:012d}"


def action(kind: ActionKind, n: int = 1) -> Action:
    return Action(kind=kind, arn=arn(n), key_id=f"k{n}", reason="test", spire_key_id="x509-CA-A")


def result(kind: ActionKind, outcome: Outcome, n: int = 1) -> ActionResult:
    return ActionResult(action(kind, n), outcome, None if outcome is Outcome.SUCCESS else "boom")


def verdict(v: Verdict, n: int) -> KeyVerdict:
    return KeyVerdict(arn=arn(n), verdict=v, reason="test", server_id="peer", state="Enabled")


def finding(a: Anomaly, n: int) -> Finding:
    return Finding(anomaly=a, arn=arn(n), detail="test")


def report(
    job: Job,
    *,
    results: tuple[ActionResult, ...] = (),
    verdicts: tuple[KeyVerdict, ...] = (),
    findings: tuple[Finding, ...] = (),
    refusal: Refusal | None = None,
    error: str | None = None,
    denied: bool = False,
    read_errors: tuple[str, ...] = (),
    duration: float = 0.5,
) -> RunReport:
    plan = Plan(
        job,
        actions=tuple(r.action for r in results),
        verdicts=verdicts,
        findings=findings,
        refusal=refusal,
        refusal_detail="held" if refusal else "",
    )
    return RunReport(
        job=job,
        plan=plan,
        results=results,
        dry_run=False,
        started_at=STARTED,
        duration_seconds=duration,
        aws_calls={"GetResources": 1},
        error=error,
        permission_denied=denied,
        read_errors=read_errors,
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(P + name, labels)


# --- before any run ----------------------------------------------------------------------------


def test_label_values_are_preinitialised_to_zero(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """Every series exists (0.0, not None) before any run, so rate() and alerts see it at once."""
    for job in ("refresh", "reclaim"):
        for outcome in RUN_OUTCOMES:
            assert value(registry, "runs_total", task=job, outcome=outcome) == 0.0, (job, outcome)
        assert value(registry, "last_success_timestamp_seconds", task=job) == 0.0
        assert value(registry, "last_run_timestamp_seconds", task=job) == 0.0
        assert value(registry, "permission_denied", task=job) == 0.0
        assert value(registry, "run_duration_seconds_count", task=job) == 0.0
        for anomaly in Anomaly:
            assert value(registry, "anomalies", task=job, anomaly=anomaly.value) == 0.0
    for v in Verdict:
        assert value(registry, "keys", state=v.value) == 0.0, v
    for kind in ActionKind:
        for outcome in ACTION_OUTCOMES:
            assert value(registry, "actions_total", action=kind.value, outcome=outcome) == 0.0
    for operation in AWS_OPERATIONS:
        for outcome in AWS_OUTCOMES:
            assert (
                value(registry, "aws_requests_total", operation=operation, outcome=outcome) == 0.0
            ), (operation, outcome)
    assert refused(registry) == 0.0
    assert value(registry, "build_info", version=__version__) == 1.0


def test_each_metrics_object_has_its_own_registry() -> None:
    """Two Metrics() (as two tests build) must not collide on prometheus_client's global one."""
    first, second = Metrics(), Metrics()
    assert first.registry is not second.registry
    first.on_aws_call("GetResources", "success")
    assert (
        second.registry.get_sample_value(
            P + "aws_requests_total", {"operation": "GetResources", "outcome": "success"}
        )
        == 0.0
    )


def test_exposition_uses_the_documented_names(metrics: Metrics) -> None:
    text = generate_latest(metrics.registry).decode()
    for name in (
        'runs_total{outcome="success",task="refresh"}',
        'run_duration_seconds_bucket{le="+Inf",task="reclaim"}',
        'last_success_timestamp_seconds{task="refresh"}',
        'keys{state="stale"}',
        'actions_total{action="stamp",outcome="success"}',
        'aws_requests_total{operation="GetResources",outcome="denied"}',
        'reclaim_refused_total{guard="clock_skew"}',
        f'build_info{{version="{__version__}"}} 1.0',
    ):
        assert P + name in text, name


# --- runs --------------------------------------------------------------------------------------


def test_runs_total_by_job_and_outcome(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe(report(Job.REFRESH), T0)
    metrics.observe(report(Job.REFRESH), T0 + 1)
    metrics.observe(report(Job.REFRESH, error="GetResources: boom"), T0 + 2)
    metrics.observe(report(Job.RECLAIM, refusal=Refusal.BLAST_RADIUS), T0 + 3)
    metrics.observe(
        report(Job.RECLAIM, results=(result(ActionKind.MARK_INACTIVE, Outcome.FAILURE),)), T0 + 4
    )
    assert value(registry, "runs_total", task="refresh", outcome="success") == 2.0
    assert value(registry, "runs_total", task="refresh", outcome="failure") == 1.0
    assert value(registry, "runs_total", task="refresh", outcome="refused") == 0.0
    assert value(registry, "runs_total", task="reclaim", outcome="refused") == 1.0
    assert value(registry, "runs_total", task="reclaim", outcome="failure") == 1.0
    assert value(registry, "runs_total", task="reclaim", outcome="success") == 0.0
    assert value(registry, "run_duration_seconds_count", task="refresh") == 3.0
    assert value(registry, "run_duration_seconds_sum", task="refresh") == pytest.approx(1.5)
    assert value(registry, "last_run_timestamp_seconds", task="reclaim") == T0 + 4


def test_last_success_only_moves_on_success(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe(report(Job.REFRESH), T0)
    assert value(registry, "last_success_timestamp_seconds", task="refresh") == T0
    metrics.observe(report(Job.REFRESH, error="boom"), T0 + 10)
    metrics.observe(report(Job.REFRESH, read_errors=("DescribeKey k1: boom",)), T0 + 20)
    metrics.observe(
        report(Job.REFRESH, results=(result(ActionKind.STAMP, Outcome.FAILURE),)), T0 + 30
    )
    assert value(registry, "last_success_timestamp_seconds", task="refresh") == T0
    assert value(registry, "last_run_timestamp_seconds", task="refresh") == T0 + 30
    metrics.observe(report(Job.RECLAIM, refusal=Refusal.CLOCK_SKEW), T0 + 40)
    assert value(registry, "last_success_timestamp_seconds", task="reclaim") == 0.0
    metrics.observe(report(Job.REFRESH), T0 + 50)
    assert value(registry, "last_success_timestamp_seconds", task="refresh") == T0 + 50
    assert value(registry, "last_success_timestamp_seconds", task="reclaim") == 0.0


def refused(registry: CollectorRegistry) -> float:
    return sum(
        value(registry, "reclaim_refused_total", guard=g) or 0.0
        for g in ("blast_radius", "clock_skew")
    )


def test_reclaim_refused_total_counts_reclaim_refusals_by_guard(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.observe(report(Job.RECLAIM), T0)
    assert refused(registry) == 0.0
    metrics.observe(report(Job.RECLAIM, refusal=Refusal.BLAST_RADIUS), T0 + 1)
    metrics.observe(report(Job.RECLAIM, refusal=Refusal.CLOCK_SKEW), T0 + 2)
    assert value(registry, "reclaim_refused_total", guard="blast_radius") == 1.0
    assert value(registry, "reclaim_refused_total", guard="clock_skew") == 1.0
    # A failed run whose plan was refused is a failure, not a refusal.
    metrics.observe(report(Job.RECLAIM, refusal=Refusal.BLAST_RADIUS, error="boom"), T0 + 3)
    assert refused(registry) == 2.0
    # A refresh refused because SPIRE is not alive is not a reclaim refusal.
    metrics.observe(report(Job.REFRESH, refusal=Refusal.SPIRE_NOT_ALIVE), T0 + 4)
    assert refused(registry) == 2.0
    assert value(registry, "runs_total", task="refresh", outcome="refused") == 1.0
    assert value(registry, "reclaim_refused_total", guard="spire_not_alive") is None


def test_spire_up_follows_the_latest_probe(metrics: Metrics, registry: CollectorRegistry) -> None:
    assert value(registry, "spire_up") == 0.0  # not known to be alive before the first probe
    up = Liveness(True, "HTTP 200", "http://localhost/live", status=200)
    down = Liveness(False, "connection refused", "http://localhost/live")
    metrics.observe(replace(report(Job.REFRESH), spire=up), T0)
    assert value(registry, "spire_up") == 1.0
    metrics.observe(replace(report(Job.REFRESH, refusal=Refusal.SPIRE_NOT_ALIVE), spire=down), T0)
    assert value(registry, "spire_up") == 0.0
    metrics.observe(report(Job.RECLAIM), T0)  # reclaim does not probe: left as it was
    assert value(registry, "spire_up") == 0.0


def test_intervals_are_exported_for_enabled_tasks_only(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.set_intervals({Job.REFRESH: 21600.0, Job.RECLAIM: 172800.0})
    assert value(registry, "interval_seconds", task="refresh") == 21600.0
    assert value(registry, "interval_seconds", task="reclaim") == 172800.0
    metrics.set_intervals({Job.REFRESH: 3600.0, Job.RECLAIM: None})
    assert value(registry, "interval_seconds", task="refresh") == 3600.0
    assert value(registry, "interval_seconds", task="reclaim") is None
    metrics.set_intervals({Job.RECLAIM: None})  # removing twice is fine
    assert value(registry, "interval_seconds", task="reclaim") is None


# --- keys, actions, anomalies, permission --------------------------------------------------------


def test_keys_gauge_follows_the_latest_reclaim_verdicts(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    first = (
        verdict(Verdict.FRESH, 1),
        verdict(Verdict.FRESH, 2),
        verdict(Verdict.STALE, 3),
        verdict(Verdict.PROTECTED, 4),
        verdict(Verdict.SERVING, 5),
    )
    metrics.observe(report(Job.RECLAIM, verdicts=first), T0)
    assert value(registry, "keys", state="fresh") == 2.0
    assert value(registry, "keys", state="stale") == 1.0
    assert value(registry, "keys", state="protected") == 1.0
    assert value(registry, "keys", state="serving") == 0.0  # serving keys are refresh's to count
    assert value(registry, "keys", state="reclaimed") == 0.0

    second = (verdict(Verdict.FRESH, 1), verdict(Verdict.RECLAIMED, 3))
    metrics.observe(report(Job.RECLAIM, verdicts=second), T0 + 1)
    assert value(registry, "keys", state="fresh") == 1.0
    assert value(registry, "keys", state="stale") == 0.0  # set back, not left at 1
    assert value(registry, "keys", state="protected") == 0.0
    assert value(registry, "keys", state="reclaimed") == 1.0

    # A run that could not observe keeps the last figures instead of reporting zero keys.
    metrics.observe(report(Job.RECLAIM, error="GetResources: AccessDenied", denied=True), T0 + 2)
    assert value(registry, "keys", state="fresh") == 1.0
    assert value(registry, "keys", state="reclaimed") == 1.0

    # The refresh job's verdicts set this server's states and leave the TD-wide ones.
    metrics.observe(report(Job.REFRESH, verdicts=(verdict(Verdict.SERVING, 9),)), T0 + 3)
    assert value(registry, "keys", state="serving") == 1.0
    assert value(registry, "keys", state="fresh") == 1.0
    # A refresh refused before it read anything (SPIRE not alive) keeps them.
    metrics.observe(report(Job.REFRESH, refusal=Refusal.SPIRE_NOT_ALIVE), T0 + 4)
    assert value(registry, "keys", state="serving") == 1.0


def test_keys_gauge_shows_the_state_the_run_left(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    verdicts = (
        verdict(Verdict.STALE, 1),  # marked and scheduled: reclaimed
        verdict(Verdict.STALE, 2),  # marked, scheduling failed: reclaiming
        verdict(Verdict.STALE, 3),  # marking failed: still stale
        verdict(Verdict.RECLAIMING, 4),  # completed: reclaimed
    )
    results = (
        result(ActionKind.MARK_INACTIVE, Outcome.SUCCESS, 1),
        result(ActionKind.SCHEDULE_DELETION, Outcome.SUCCESS, 1),
        result(ActionKind.MARK_INACTIVE, Outcome.SUCCESS, 2),
        result(ActionKind.SCHEDULE_DELETION, Outcome.FAILURE, 2),
        result(ActionKind.MARK_INACTIVE, Outcome.FAILURE, 3),
        result(ActionKind.SCHEDULE_DELETION, Outcome.SKIPPED, 3),
        result(ActionKind.SCHEDULE_DELETION, Outcome.SUCCESS, 4),
    )
    metrics.observe(report(Job.RECLAIM, verdicts=verdicts, results=results), T0)
    assert value(registry, "keys", state="reclaimed") == 2.0
    assert value(registry, "keys", state="reclaiming") == 1.0
    assert value(registry, "keys", state="stale") == 1.0
    # A dry run leaves every key as it found it.
    dry = replace(report(Job.RECLAIM, verdicts=verdicts, results=results), dry_run=True)
    metrics.observe(dry, T0 + 1)
    assert value(registry, "keys", state="stale") == 3.0
    assert value(registry, "keys", state="reclaimed") == 0.0
    # A legacy key migrated by the run now serves.
    legacy = (verdict(Verdict.LEGACY, 7), verdict(Verdict.LEGACY, 8), verdict(Verdict.SERVING, 9))
    migrated = (
        result(ActionKind.MIGRATE, Outcome.SUCCESS, 7),
        result(ActionKind.MIGRATE, Outcome.FAILURE, 8),
    )
    metrics.observe(report(Job.REFRESH, verdicts=legacy, results=migrated), T0 + 2)
    assert value(registry, "keys", state="serving") == 2.0
    assert value(registry, "keys", state="legacy") == 1.0


def test_actions_total_by_action_and_outcome(metrics: Metrics, registry: CollectorRegistry) -> None:
    results = (
        result(ActionKind.STAMP, Outcome.SUCCESS, 1),
        result(ActionKind.STAMP, Outcome.SUCCESS, 2),
        result(ActionKind.STAMP, Outcome.FAILURE, 3),
        result(ActionKind.REFRESH_ALIAS, Outcome.SUCCESS, 1),
        result(ActionKind.MIGRATE, Outcome.SKIPPED, 4),
    )
    metrics.observe(report(Job.REFRESH, results=results), T0)
    metrics.observe(
        report(
            Job.RECLAIM,
            results=(
                result(ActionKind.MARK_INACTIVE, Outcome.SUCCESS, 5),
                result(ActionKind.SCHEDULE_DELETION, Outcome.SUCCESS, 5),
            ),
        ),
        T0 + 1,
    )
    metrics.observe(report(Job.REFRESH, results=results[:1]), T0 + 2)
    assert value(registry, "actions_total", action="stamp", outcome="success") == 3.0
    assert value(registry, "actions_total", action="stamp", outcome="failure") == 1.0
    assert value(registry, "actions_total", action="refresh_alias", outcome="success") == 1.0
    assert value(registry, "actions_total", action="migrate", outcome="skipped") == 1.0
    assert value(registry, "actions_total", action="migrate", outcome="success") == 0.0
    assert value(registry, "actions_total", action="mark_inactive", outcome="success") == 1.0
    assert value(registry, "actions_total", action="schedule_deletion", outcome="success") == 1.0


def test_anomalies_gauge_reflects_each_jobs_latest_run(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    findings = (
        finding(Anomaly.MALFORMED_LAST_UPDATE, 1),
        finding(Anomaly.MALFORMED_LAST_UPDATE, 2),
        finding(Anomaly.FUTURE_LAST_UPDATE, 3),
    )
    metrics.observe(report(Job.RECLAIM, findings=findings), T0)
    metrics.observe(report(Job.REFRESH, findings=(finding(Anomaly.SUPERSEDED, 4),)), T0)
    assert value(registry, "anomalies", task="reclaim", anomaly="malformed_last_update") == 2.0
    assert value(registry, "anomalies", task="reclaim", anomaly="future_last_update") == 1.0
    assert value(registry, "anomalies", task="refresh", anomaly="superseded") == 1.0
    assert value(registry, "anomalies", task="refresh", anomaly="malformed_last_update") == 0.0

    metrics.observe(report(Job.RECLAIM, error="boom"), T0 + 1)  # kept: nothing observed
    assert value(registry, "anomalies", task="reclaim", anomaly="malformed_last_update") == 2.0
    metrics.observe(report(Job.RECLAIM, findings=(finding(Anomaly.FUTURE_LAST_UPDATE, 3),)), T0)
    assert value(registry, "anomalies", task="reclaim", anomaly="malformed_last_update") == 0.0
    assert value(registry, "anomalies", task="reclaim", anomaly="future_last_update") == 1.0
    assert value(registry, "anomalies", task="refresh", anomaly="superseded") == 1.0  # untouched


def test_permission_denied_gauge(metrics: Metrics, registry: CollectorRegistry) -> None:
    denied = report(Job.REFRESH, error="tag:GetResources denied", denied=True)
    metrics.observe(denied, T0)
    assert value(registry, "permission_denied", task="refresh") == 1.0
    assert value(registry, "permission_denied", task="reclaim") == 0.0
    metrics.observe(report(Job.REFRESH, error="GetResources: InternalFailure"), T0 + 1)
    assert value(registry, "permission_denied", task="refresh") == 0.0
    metrics.observe(denied, T0 + 2)
    metrics.observe(report(Job.REFRESH), T0 + 3)
    assert value(registry, "permission_denied", task="refresh") == 0.0


def test_on_aws_call_counts_aws_requests(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.on_aws_call("GetResources", "success")
    metrics.on_aws_call("GetResources", "success")
    metrics.on_aws_call("GetResources", "denied")
    metrics.on_aws_call("TagResources", "throttled")
    metrics.on_aws_call("CancelKeyDeletion", "error")  # not pre-declared: still counted
    assert value(registry, "aws_requests_total", operation="GetResources", outcome="success") == 2
    assert value(registry, "aws_requests_total", operation="GetResources", outcome="denied") == 1
    assert value(registry, "aws_requests_total", operation="TagResources", outcome="throttled") == 1
    assert value(registry, "aws_requests_total", operation="DescribeKey", outcome="success") == 0
    assert (
        value(registry, "aws_requests_total", operation="CancelKeyDeletion", outcome="error") == 1
    )


def test_no_label_carries_an_arn(metrics: Metrics, registry: CollectorRegistry) -> None:
    results = (
        result(ActionKind.MARK_INACTIVE, Outcome.SUCCESS, 1),
        result(ActionKind.SCHEDULE_DELETION, Outcome.FAILURE, 1),
    )
    metrics.observe(
        report(
            Job.RECLAIM,
            results=results,
            verdicts=(verdict(Verdict.STALE, 1), verdict(Verdict.MALFORMED, 2)),
            findings=(finding(Anomaly.MALFORMED_LAST_UPDATE, 2),),
            read_errors=(f"DescribeKey {arn(3)}: boom",),
        ),
        T0,
    )
    metrics.observe(report(Job.REFRESH, error=f"TagResource {arn(4)}: boom", denied=True), T0)
    for family in registry.collect():
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                assert "arn:" not in label_value, (sample.name, label)


def test_no_created_series_and_process_metrics_on() -> None:
    metrics = Metrics(CollectorRegistry())
    text = generate_latest(metrics.registry).decode()
    assert "_created" not in text  # counters and histograms export no *_created twin
    # The process's own memory, which the unit's MemoryMax and the pod's limit cap.
    assert "\nprocess_resident_memory_bytes " in text
    assert "\nprocess_cpu_seconds_total " in text
