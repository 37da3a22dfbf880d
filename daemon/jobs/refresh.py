"""The refresh job (contract §4, §5): migrate this server's legacy keys, stamp its serving keys
and refresh its aliases, only while the local SPIRE server is alive."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime

import structlog

from daemon.aws.clock import current_run_clock
from daemon.jobs.frame import Context, Decided, run_once
from daemon.model import AliasMeta, Job, Liveness, RefreshSnapshot, RunReport
from daemon.observe import observe_refresh, scan_own_aliases
from daemon.plan import RefreshPolicy, plan_refresh
from daemon.settings import Settings

log = structlog.get_logger("daemon.jobs")


def refresh_policy(settings: Settings) -> RefreshPolicy:
    """Return the planner's view of the refresh settings."""
    return RefreshPolicy(
        migrate_legacy_aliases=settings.refresh.migrate_legacy_aliases,
        refresh_aliases=settings.refresh.refresh_aliases,
    )


async def _legacy_aliases(ctx: Context, now: datetime) -> tuple[AliasMeta, ...]:
    """This server's aliases from the account-wide scan, run at start and then on its cadence."""
    settings = ctx.settings.refresh
    if not settings.migrate_legacy_aliases:
        return ()
    due = ctx.state.alias_scan_at is None or (
        now - ctx.state.alias_scan_at >= settings.alias_scan_interval
    )
    if due:
        ctx.state.legacy_aliases = await scan_own_aliases(ctx.api, ctx.trust_domain, ctx.server_id)
        ctx.state.alias_scan_at = now
        log.info("alias_scan_finished", own_aliases=len(ctx.state.legacy_aliases))
    return ctx.state.legacy_aliases


async def refresh_once(ctx: Context) -> RunReport:
    """Run the refresh job once: migrate legacy keys, stamp serving keys, refresh aliases.

    The local SPIRE server is probed first (a dead one costs no AWS call at all) and again once
    the reads are done, right before the first write: nothing is written unless it is alive.
    """

    async def body(now: datetime) -> Decided:
        policy = refresh_policy(ctx.settings)
        first = await ctx.spire_liveness()
        if not first.alive:
            _log_liveness(first)
            empty = RefreshSnapshot(ctx.trust_domain, ctx.server_id, (), (), first, observed=False)
            return Decided(plan_refresh(empty, now, policy), (), first)
        legacy = await _legacy_aliases(ctx, now)
        observed = await observe_refresh(
            ctx.api, ctx.trust_domain, ctx.server_id, legacy, probe=ctx.spire_liveness
        )
        liveness = observed.snapshot.spire
        if liveness is not None and not liveness.alive:
            _log_liveness(liveness)
        stamp_time = _stamp_time(ctx, ctx.clock())
        # The planner is pure: a large trust domain is planned off the event loop.
        plan = await asyncio.to_thread(plan_refresh, observed.snapshot, stamp_time, policy)
        if plan.failure is not None:
            plan = replace(plan, failure=f"{plan.failure}; {_where(ctx)}")
        return Decided(plan, observed.errors, liveness)

    return await run_once(ctx, Job.REFRESH, body)


def _where(ctx: Context) -> str:
    """Where the run looked: the region and endpoint of the AWS clients."""
    endpoint = ctx.api.endpoint_url or "the region's default endpoint"
    return (
        f"looked in trust domain {ctx.trust_domain}, server ID {ctx.server_id}, "
        f"region {ctx.api.region or 'unknown'}, endpoint {endpoint}"
    )


def _log_liveness(liveness: Liveness) -> None:
    log.warning(
        "spire_not_alive",
        url=liveness.url,
        failure=liveness.failure.value if liveness.failure else None,
        status=liveness.status,
        detail=liveness.detail,
    )


def _stamp_time(ctx: Context, local: datetime) -> datetime:
    """The time to stamp: AWS's (this run's responses, carried on the monotonic clock).

    A host clock behind would stamp serving keys with old times and peers would reclaim them;
    one ahead would keep them looking fresh, or in the future, for too long. Only when no
    response carried a Date is the local clock used, and that is said.
    """
    clock = current_run_clock()
    aws = clock.now() if clock is not None else None
    if aws is None:
        log.warning(
            "no_aws_time",
            detail="no AWS response carried a Date header: stamping with the local clock",
        )
        return local
    skew = local - aws
    tolerance = ctx.settings.reclaim.clock_skew_tolerance
    if abs(skew) > tolerance:
        log.warning(
            "clock_skew_corrected",
            skew_seconds=round(skew.total_seconds()),
            tolerance_seconds=tolerance.total_seconds(),
            detail="the local clock is off: stamping with AWS's (the Date of its responses)",
        )
    return aws
