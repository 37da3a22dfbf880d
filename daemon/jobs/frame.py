"""The frame every job runs in: the :class:`Context` a run gets, and :func:`run_once`, which
runs a job's observe-and-plan body, executes the plan and ends in one report and one summary
event."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from daemon.aws.client import AwsApi
from daemon.aws.clock import RunClock, run_clock
from daemon.aws.errors import AccessDenied, AwsError
from daemon.aws.stats import counting_calls
from daemon.execute import ExecuteOptions, TaggingMode, execute
from daemon.liveness import Probe, probe_for
from daemon.model import (
    ActionResult,
    AliasMeta,
    Job,
    JobName,
    Liveness,
    Outcome,
    Plan,
    RunReport,
    Verdict,
)
from daemon.progress import Listener
from daemon.settings import Settings

log = structlog.get_logger("daemon.jobs")


def utc_now() -> datetime:
    """Return the current time in UTC (the one clock the jobs read)."""
    return datetime.now(UTC)


@dataclass(slots=True)
class JobState:
    """What the jobs remember between runs of one process."""

    alias_scan_at: datetime | None = None
    legacy_aliases: tuple[AliasMeta, ...] = ()
    tagging: TaggingMode = field(default_factory=TaggingMode)


@dataclass(slots=True)
class Context:
    """Everything a job needs: settings, identity, AWS and the state kept between runs."""

    settings: Settings
    server_id: str
    api: AwsApi
    state: JobState = field(default_factory=JobState)
    clock: Callable[[], datetime] = utc_now
    #: The monotonic clock AWS's time is carried on within a run (see daemon.aws.clock).
    monotonic: Callable[[], float] = time.monotonic
    dry_run: bool = False
    #: Asks the local SPIRE server whether it is alive; None: as the settings say.
    probe: Probe | None = None
    #: Told of every finished action (the CLI draws a live line in a terminal with it).
    progress: Listener | None = None

    @property
    def trust_domain(self) -> str:
        """The trust domain this daemon serves."""
        return self.settings.trust_domain

    def __post_init__(self) -> None:
        self.api.write_gate = self.write_gate

    def write_gate(self) -> str | None:
        """Why no write may be sent right now (the settings in force say dry run), or None.

        Asked before every mutating call, so that a reload turning dry run on holds back even
        the rest of a run already under way.
        """
        if self.dry_run or self.settings.dry_run:
            return "dry_run is on"
        return None

    async def spire_liveness(self) -> Liveness:
        """Probe the local SPIRE server (the settings in force say how)."""
        if self.probe is not None:
            return await self.probe()
        s = self.settings
        probe = probe_for(
            s.spire_health_url, s.assume_spire_alive, s.spire_health_timeout.total_seconds()
        )
        return await probe()


@dataclass(frozen=True, slots=True)
class Decided:
    """What a job's observe-and-plan step hands to the executor."""

    plan: Plan
    read_errors: tuple[str, ...] = ()
    spire: Liveness | None = None  # refresh: the last probe of the SPIRE server


#: A job's observe-and-plan step, given the run's start time.
JobBody = Callable[[datetime], Awaitable[Decided]]


async def run_once(ctx: Context, job: JobName, body: JobBody) -> RunReport:
    """Run a job once around its observe-and-plan ``body``: count its AWS calls on the run's own
    clock, execute the plan (or only plan it, in a dry run), log and report. Every job is this
    with a body of its own."""
    started = ctx.clock()
    t0 = ctx.monotonic()
    dry_run = ctx.dry_run or ctx.settings.dry_run
    decided = Decided(Plan(job))
    results: tuple[ActionResult, ...] = ()
    error: str | None = None
    denied = False
    with counting_calls() as calls, run_clock(RunClock(ctx.monotonic, ctx.clock)):
        try:
            decided = await body(started)
            _log_plan(decided.plan)
            options = ExecuteOptions(
                ctx.settings.reclaim.pending_window_days,
                dry_run,
                ctx.settings.reclaim.protect_tag,
                job=job,
                progress=ctx.progress,
            )
            results = await execute(ctx.api, decided.plan, options, ctx.state.tagging)
        except AccessDenied as exc:
            error, denied = exc.explain(), True
        except AwsError as exc:
            error = str(exc)
    per_op: Counter[str] = Counter()
    for (operation, _), count in calls.items():
        if count:
            per_op[operation] += count
    report = RunReport(
        job=job,
        plan=decided.plan,
        results=results,
        dry_run=dry_run,
        started_at=started,
        duration_seconds=ctx.monotonic() - t0,
        aws_calls=dict(sorted(per_op.items())),
        error=error,
        permission_denied=denied or any(r.denied for r in results),
        read_errors=decided.read_errors,
        spire=decided.spire,
    )
    log_summary(report)
    return report


def _log_plan(plan: Plan) -> None:
    for finding in plan.findings:
        log.warning(
            "finding",
            job=plan.job,
            anomaly=finding.anomaly.value,
            key_arn=finding.arn,
            detail=finding.detail,
        )
    if plan.refusal is not None:
        log.error(
            f"{plan.job}_refused",
            guard=plan.refusal.value,
            detail=plan.refusal_detail,
            would_act=sum(
                1 for v in plan.verdicts if v.verdict in (Verdict.STALE, Verdict.RECLAIMING)
            )
            if plan.job == Job.RECLAIM
            else None,
        )


def summary_fields(report: RunReport) -> dict[str, Any]:
    """Return the counts of one run, as logged in its summary event and printed by ``once``."""
    actions: Counter[str] = Counter(
        f"{r.action.kind.value}.{r.outcome.value}" for r in report.results
    )
    verdicts: Counter[str] = Counter(v.verdict.value for v in report.plan.verdicts)
    findings: Counter[str] = Counter(f.anomaly.value for f in report.plan.findings)
    fields: dict[str, Any] = {
        "job": report.job,
        "outcome": report.outcome.value,
        "dry_run": report.dry_run,
        "keys": sum(verdicts.values()),
        "verdicts": dict(sorted(verdicts.items())),
        "actions": dict(sorted(actions.items())),
        "findings": dict(sorted(findings.items())),
        "aws_calls": dict(report.aws_calls),
        "aws_calls_total": sum(report.aws_calls.values()),
        "duration_seconds": round(report.duration_seconds, 3),
    }
    if report.plan.refusal is not None:
        fields["refused"] = report.plan.refusal.value
        fields["refusal_detail"] = report.plan.refusal_detail
    if report.spire is not None:
        fields["spire_alive"] = report.spire.alive
        fields["spire_detail"] = report.spire.detail
    if report.plan.failure is not None:
        fields["failure"] = report.plan.failure
    if report.error is not None:
        fields["error"] = report.error
    if report.read_errors:
        fields["read_errors"] = list(report.read_errors[:10])
    return fields


def log_summary(report: RunReport) -> None:
    """Emit the one summary event of a run."""
    fields = summary_fields(report)
    event = f"{report.job}_finished"
    if report.error is not None or report.plan.failure is not None:
        log.error(event, **fields)
    elif report.outcome is Outcome.SUCCESS:
        log.info(event, **fields)
    else:
        log.warning(event, **fields)
