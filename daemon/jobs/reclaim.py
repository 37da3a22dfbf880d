"""The reclaim job (contract §6): mark and schedule the deletion of the trust domain's dead
keys, within the guards."""

from __future__ import annotations

import asyncio
from datetime import datetime

from daemon.jobs.frame import Context, Decided, run_once
from daemon.model import Job, RunReport
from daemon.observe import observe_reclaim
from daemon.plan import ReclaimPolicy, plan_reclaim
from daemon.settings import Settings


def reclaim_policy(settings: Settings) -> ReclaimPolicy:
    """Return the planner's view of the reclaim settings."""
    r = settings.reclaim
    return ReclaimPolicy(
        stale_after=r.stale_after,
        clock_skew_tolerance=r.clock_skew_tolerance,
        max_reclaims=r.max_reclaims,
        max_reclaim_fraction=r.max_reclaim_fraction,
        protect_tag=r.protect_tag,
        window=r.interval,
        # An interrupted run is completed by the next one: at most an interval, plus its
        # jitter, later.
        mark_window=r.interval * (1 + r.jitter),
    )


async def reclaim_once(ctx: Context) -> RunReport:
    """Run the reclaim job once: mark and schedule deletion of the trust domain's dead keys."""
    policy = reclaim_policy(ctx.settings)

    async def body(now: datetime) -> Decided:
        del now  # staleness is judged on AWS's time, which the observation carries
        observed = await observe_reclaim(ctx.api, ctx.trust_domain, ctx.server_id, policy)
        plan = await asyncio.to_thread(plan_reclaim, observed.snapshot, policy)
        return Decided(plan, observed.errors)

    return await run_once(ctx, Job.RECLAIM, body)
