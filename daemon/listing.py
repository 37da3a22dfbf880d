"""``keys``: every SPIRE key of the trust domain with the verdict the jobs would reach, read
only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from daemon.aws.client import AwsApi
from daemon.aws.clock import run_clock
from daemon.jobs import reclaim_policy, refresh_policy
from daemon.model import Finding, KeyVerdict, Verdict
from daemon.observe import observe_reclaim, observe_refresh, scan_own_aliases
from daemon.plan import check_clock, plan_reclaim, plan_refresh
from daemon.settings import Settings


@dataclass(frozen=True, slots=True)
class KeyListing:
    """The keys, what was found about them, and what could not be read."""

    verdicts: tuple[KeyVerdict, ...]
    findings: tuple[Finding, ...]
    errors: tuple[str, ...]
    skew_warning: str | None  # the local clock disagrees with AWS's beyond the tolerance


async def list_keys(api: AwsApi, settings: Settings, server_id: str) -> KeyListing:
    """Observe as both jobs do and plan without executing anything."""
    policy = reclaim_policy(settings)
    with run_clock():
        observed = await observe_reclaim(
            api, settings.trust_domain, server_id, policy, describe_all=True
        )
        snapshot = observed.snapshot
        skewed = check_clock(snapshot.aws_time, snapshot.local_time, policy.clock_skew_tolerance)
        # Every alias of this server, whatever migrate_legacy_aliases says: an alias that
        # resolves to a key that is not Enabled stops SPIRE from starting.
        legacy = await scan_own_aliases(api, settings.trust_domain, server_id)
        own = await observe_refresh(api, settings.trust_domain, server_id, legacy)
    now = snapshot.aws_time or snapshot.local_time or datetime.now(UTC)
    reclaim_plan = plan_reclaim(snapshot, policy)
    refresh_plan = plan_refresh(own.snapshot, now, refresh_policy(settings))
    return KeyListing(
        verdicts=tuple(merge_verdicts(reclaim_plan.verdicts, refresh_plan.verdicts)),
        # Each finding once (both planners may see the same key), in the order first seen.
        findings=tuple(dict.fromkeys(refresh_plan.findings + reclaim_plan.findings)),
        errors=tuple(observed.errors + own.errors),
        skew_warning=skewed if snapshot.aws_time is not None else None,
    )


def merge_verdicts(
    trust_domain: Sequence[KeyVerdict], own: Sequence[KeyVerdict]
) -> list[KeyVerdict]:
    """Show this server's keys as the refresh job sees them (serving, superseded, legacy).

    The reclaim verdict stays where it says more than "fresh"; untagged legacy keys, which the
    trust-domain listing cannot find by tag, are added.
    """
    mine = {v.arn: v for v in own}
    merged = [
        mine[v.arn] if v.arn in mine and v.verdict is Verdict.FRESH else v for v in trust_domain
    ]
    listed = {v.arn for v in trust_domain}
    merged += [v for v in own if v.arn not in listed]
    return merged
