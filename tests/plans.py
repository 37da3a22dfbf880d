"""Helpers for the planner's tests: build a snapshot, plan it, read the plan back."""

from __future__ import annotations

from datetime import datetime

from daemon.model import (
    Action,
    ActionKind,
    AliasTarget,
    Anomaly,
    ObservedKey,
    Plan,
    ReclaimSnapshot,
    RefreshSnapshot,
    Verdict,
)
from daemon.plan import ReclaimPolicy, RefreshPolicy, plan_reclaim, plan_refresh
from tests.strategies import ALIVE, NOW, OWN, PEER, STALE_AFTER, make_key
from tests.world import TD

ACME = "bundle-acme-foo.bar+rsa"
STAMP = str(int(NOW.timestamp()))
CUTOFF = NOW - STALE_AFTER
ANCIENT = "1000"

#: Guards wide open, for the tests of one staleness rule at a time.
LOOSE = ReclaimPolicy(max_reclaims=1000, max_reclaim_fraction=1.0)

_SAME = "same"


def refresh(
    *keys: ObservedKey,
    aliases: tuple[AliasTarget, ...] = (),
    policy: RefreshPolicy | None = None,
    now: datetime = NOW,
) -> Plan:
    """Plan a refresh of these keys and aliases, the SPIRE server alive."""
    snapshot = RefreshSnapshot(TD, OWN, tuple(keys), tuple(aliases), ALIVE)
    return plan_refresh(snapshot, now, policy or RefreshPolicy())


def reclaim_snapshot(
    *keys: ObservedKey,
    own_aliases: tuple[AliasTarget, ...] = (),
    now: datetime = NOW,
    aws_time: datetime | str | None = _SAME,
    local_time: datetime | str | None = _SAME,
) -> ReclaimSnapshot:
    """A reclaim snapshot; AWS's clock and the host's both say ``now`` unless told otherwise."""
    aws = now if aws_time == _SAME else aws_time
    local = now if local_time == _SAME else local_time
    assert not isinstance(aws, str) and not isinstance(local, str)
    return ReclaimSnapshot(TD, OWN, tuple(keys), tuple(own_aliases), aws, local)


def reclaim(
    *keys: ObservedKey,
    own_aliases: tuple[AliasTarget, ...] = (),
    policy: ReclaimPolicy | None = None,
    now: datetime = NOW,
    aws_time: datetime | str | None = _SAME,
    local_time: datetime | str | None = _SAME,
) -> Plan:
    """Plan a reclaim of these keys (guards wide open unless ``policy`` says otherwise)."""
    snapshot = reclaim_snapshot(
        *keys, own_aliases=own_aliases, now=now, aws_time=aws_time, local_time=local_time
    )
    return plan_reclaim(snapshot, policy or LOOSE)


def peer(n: int, **kwargs: object) -> ObservedKey:
    """A key of another server of this TD, stale by default."""
    kwargs.setdefault("server", PEER)
    kwargs.setdefault("last_update", ANCIENT)
    return make_key(n, **kwargs)  # type: ignore[arg-type]


def kinds(plan: Plan, arn: str | None = None) -> list[ActionKind]:
    """The kinds of the plan's actions (on one key)."""
    return [a.kind for a in plan.actions if arn is None or a.arn == arn]


def verdict_of(plan: Plan, arn: str) -> Verdict:
    """The one verdict on a key."""
    found = [v.verdict for v in plan.verdicts if v.arn == arn]
    assert len(found) == 1, found
    return found[0]


def anomalies(plan: Plan, arn: str | None = None) -> set[Anomaly]:
    """The anomalies found (on one key)."""
    return {f.anomaly for f in plan.findings if arn is None or f.arn == arn}


def actions_of(plan: Plan, kind: ActionKind) -> list[Action]:
    """The plan's actions of one kind."""
    return [a for a in plan.actions if a.kind is kind]


def assert_reclaimed(plan: Plan, arn: str) -> None:
    """The key is marked, then its deletion scheduled, and nothing held the run."""
    assert plan.refusal is None, plan.refusal_detail
    assert kinds(plan, arn) == [ActionKind.MARK_INACTIVE, ActionKind.SCHEDULE_DELETION]


def assert_kept(plan: Plan, arn: str, verdict: Verdict | None = None) -> None:
    """No action on the key (and, when given, this verdict)."""
    assert kinds(plan, arn) == []
    if verdict is not None:
        assert verdict_of(plan, arn) is verdict
