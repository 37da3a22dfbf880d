"""What a key's tags alone say about it: the rules of "stale" that need no AWS state.

The reclaim planner starts from them (:mod:`daemon.plan.reclaim`), the observer uses them to
choose what to describe, and the budget guard to count what may have been reclaimed already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon import spire
from daemon.model import Anomaly, ObservedKey, Verdict
from daemon.plan.common import iso, unix


@dataclass(frozen=True, slots=True)
class ReclaimPolicy:
    """The settings the reclaim planner needs."""

    stale_after: timedelta = timedelta(days=14)
    clock_skew_tolerance: timedelta = timedelta(minutes=5)
    #: The most keys of the trust domain scheduled for deletion within one ``window``, by all
    #: daemons together (counted from AWS's state).
    max_reclaims: int = 10
    #: The largest share of the trust domain's servers one run may leave with no live key.
    max_reclaim_fraction: float = 0.5
    protect_tag: str = "spire-protect"
    #: The budget's window: ``reclaim.interval``.
    window: timedelta = timedelta(hours=48)
    #: A mark this recent is an interrupted reclaim, to be completed; an older one on an Enabled
    #: key is an operator's restore. ``reclaim.interval`` plus its largest jitter.
    mark_window: timedelta = timedelta(hours=52, minutes=48)


@dataclass(frozen=True, slots=True)
class TagJudgement:
    """What the tags alone say about a key, before any AWS state is known."""

    verdict: Verdict | None  # None: stale by its tags, pending the state checks
    reason: str
    anomaly: Anomaly | None = None


def judge_tags(
    tags: Mapping[str, str], trust_domain: str, now: datetime, policy: ReclaimPolicy
) -> TagJudgement:
    """Judge a key by its tags alone (verdict None: stale so far)."""
    if tags.get(spire.TAG_TRUST_DOMAIN) != trust_domain:
        return TagJudgement(Verdict.UNKNOWN, "not tagged with this trust domain")
    if not tags.get(spire.TAG_SERVER_ID):
        return TagJudgement(Verdict.MALFORMED, "no spire-server-id tag", Anomaly.MISSING_SERVER_ID)
    active = tags.get(spire.TAG_ACTIVE)
    if active not in (spire.ACTIVE_TRUE, spire.ACTIVE_FALSE):
        return TagJudgement(
            Verdict.MALFORMED,
            f"spire-active is {active!r}, not true or false",
            Anomaly.MALFORMED_ACTIVE,
        )
    if not tags.get(spire.TAG_KEY_ID):
        return TagJudgement(Verdict.MALFORMED, "no spire-key-id tag", Anomaly.MISSING_KEY_ID)
    if tags.get(policy.protect_tag, "").strip().lower() == "true":
        return TagJudgement(Verdict.PROTECTED, f"{policy.protect_tag}=true")
    raw = tags.get(spire.TAG_LAST_UPDATE)
    if raw is not None:
        parsed = spire.parse_last_update(raw)
        if parsed is None:
            return TagJudgement(
                Verdict.MALFORMED,
                f"spire-last-update {raw[:40]!r} is not Unix seconds",
                Anomaly.MALFORMED_LAST_UPDATE,
            )
        if parsed > unix(now + policy.clock_skew_tolerance):
            return TagJudgement(
                Verdict.FUTURE,
                f"spire-last-update {parsed} is in the future",
                Anomaly.FUTURE_LAST_UPDATE,
            )
        if parsed > unix(now - policy.stale_after):
            if active == spire.ACTIVE_FALSE:
                return TagJudgement(
                    Verdict.INACTIVE,
                    "spire-active=false but refreshed recently",
                    Anomaly.INACTIVE_NOT_STALE,
                )
            return TagJudgement(Verdict.FRESH, f"refreshed at {iso(parsed)} ({parsed})")
        return TagJudgement(None, f"not refreshed since {iso(parsed)} ({parsed})")
    return TagJudgement(None, "no spire-last-update tag")


def needs_state(key: ObservedKey, trust_domain: str, now: datetime, policy: ReclaimPolicy) -> bool:
    """Whether the planner needs DescribeKey for ``key``: its tags say stale, or it is marked
    ``spire-active=false`` (the budget counts the trust domain's recent deletions)."""
    if key.tags.get(spire.TAG_TRUST_DOMAIN) != trust_domain:
        return False
    if key.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_FALSE:
        return True
    return judge_tags(key.tags, trust_domain, now, policy).verdict is None
