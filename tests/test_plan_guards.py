"""The reclaim guards (contract §6.3-§6.6), each written as the attack it stops.

AWS's clock against a stepped host clock; the share of the trust domain's servers, which junk and
pending keys must not inflate; the fleet-wide budget, which retries and several daemons must not
slice; the daemon's mark, which tells its own interrupted reclaims from an operator's restores;
and the re-read of KMS's own tags right before a key is marked.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from daemon import spire
from daemon.model import (
    KEY_STATE_DISABLED,
    KEY_STATE_PENDING_DELETION,
    ActionKind,
    Anomaly,
    ObservedKey,
    Refusal,
    Verdict,
)
from daemon.plan import (
    GUARDS,
    ReclaimPolicy,
    check_clock,
    confirm,
    fraction_reads,
    judge_all,
    plan_reclaim,
)
from daemon.plan.guards import GuardRun, blast_radius_guard, budget_guard, clock_guard, spent
from tests.plans import (
    ANCIENT,
    LOOSE,
    STAMP,
    anomalies,
    assert_reclaimed,
    kinds,
    peer,
    reclaim,
    reclaim_snapshot,
    verdict_of,
)
from tests.strategies import DAY, NOW, OWN, TOLERANCE, key_arn, lu, make_key, unix

HOUR = timedelta(hours=1)


def fresh(n: int, server: str) -> ObservedKey:
    return make_key(n, server=server, last_update=STAMP)


def stale(n: int, server: str, **kwargs: object) -> ObservedKey:
    return make_key(n, server=server, last_update=ANCIENT, **kwargs)  # type: ignore[arg-type]


def marked(n: int, server: str, at: datetime, **kwargs: object) -> ObservedKey:
    """A stale key the daemon marked spire-active=false at ``at``."""
    extra = {spire.TAG_MARKED_AT: str(unix(at))}
    return stale(n, server, active="false", extra=extra, **kwargs)


def pending(n: int, server: str, scheduled: datetime, *, mark: bool = True) -> ObservedKey:
    """A key reclaimed at ``scheduled`` with a 7-day window: marked false, pending deletion."""
    key = stale(n, server, active="false", state=KEY_STATE_PENDING_DELETION)
    if mark:
        key = replace(key, tags={**key.tags, spire.TAG_MARKED_AT: str(unix(scheduled))})
    assert key.meta is not None
    return replace(key, meta=replace(key.meta, deletion_date=scheduled + 7 * DAY))


# --- the clock (contract §6.2, §6.5) ------------------------------------------------------------


def test_staleness_is_judged_on_awss_time_not_the_hosts() -> None:
    """A host clock 30 days ahead when the run starts, stepped back before the plan: the stamp
    an hour old is fresh on AWS's clock, whatever the host said at the start."""
    live = peer(1, last_update=lu(NOW - HOUR))
    plan = reclaim(live, now=NOW)  # the snapshot carries AWS's time
    assert verdict_of(plan, live.arn) is Verdict.FRESH
    assert kinds(plan) == []


@pytest.mark.parametrize(
    "local",
    [
        NOW + TOLERANCE + timedelta(seconds=1),
        NOW - TOLERANCE - timedelta(seconds=1),
        NOW + 30 * DAY,
    ],
)
def test_clock_guard_compares_the_host_clock_with_awss_at_the_same_instant(
    local: datetime,
) -> None:
    keys = [peer(1), peer(2, active="false")]
    plan = reclaim(*keys, local_time=local)
    assert plan.refusal is Refusal.CLOCK_SKEW
    assert "local clock differs from AWS's" in plan.refusal_detail
    assert plan.actions == ()
    assert len(plan.verdicts) == 2  # still reports what it saw, judged on AWS's time


def test_no_aws_time_no_reclaim() -> None:
    plan = reclaim(peer(1), aws_time=None)
    assert plan.refusal is Refusal.CLOCK_SKEW
    assert "no Date header" in plan.refusal_detail
    assert plan.actions == ()


@pytest.mark.parametrize("skew", [timedelta(0), TOLERANCE, -TOLERANCE, timedelta(seconds=-3)])
def test_clock_within_tolerance_acts(skew: timedelta) -> None:
    assert_reclaimed(reclaim(peer(1), local_time=NOW + skew), key_arn(1))


def test_check_clock() -> None:
    assert check_clock(NOW, NOW, TOLERANCE) is None
    assert check_clock(NOW, NOW + TOLERANCE, TOLERANCE) is None
    assert check_clock(NOW, NOW - TOLERANCE, TOLERANCE) is None
    assert check_clock(NOW, None, TOLERANCE) is None
    assert check_clock(None, NOW, TOLERANCE) is not None
    assert check_clock(NOW, NOW + TOLERANCE + timedelta(microseconds=1), TOLERANCE) is not None
    assert check_clock(NOW, NOW - TOLERANCE - timedelta(microseconds=1), TOLERANCE) is not None


def test_the_clock_is_the_first_guard_and_refuses_even_with_nothing_to_reclaim() -> None:
    assert GUARDS[0] is clock_guard
    plan = reclaim(fresh(1, "peer"), local_time=NOW + DAY)
    assert plan.refusal is Refusal.CLOCK_SKEW
    many = [peer(n) for n in range(5)]
    policy = replace(LOOSE, max_reclaims=1, max_reclaim_fraction=0.1)
    assert reclaim(*many, policy=policy, aws_time=None).refusal is Refusal.CLOCK_SKEW


# --- SPIRE-shaped keys only (contract §6.3) -----------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"key_usage": "ENCRYPT_DECRYPT", "key_spec": "SYMMETRIC_DEFAULT"}, "KeyUsage"),
        ({"key_spec": "ECC_SECG_P256K1"}, "KeySpec"),
        ({"key_spec": "HMAC_256", "key_usage": "GENERATE_VERIFY_MAC"}, "KeyUsage"),
        ({"multi_region": True}, "multi-Region"),
        ({"key_manager": "AWS"}, "KeyManager"),
        ({"key_usage": None}, "KeyUsage"),
        ({"multi_region": None}, "MultiRegion"),
    ],
)
def test_a_key_not_shaped_like_spires_is_never_reclaimed(
    fields: dict[str, object], why: str
) -> None:
    """A symmetric data key someone tagged with SPIRE's tags (by mistake or on purpose)."""
    key = peer(1, meta_fields=fields)
    plan = reclaim(key)
    assert kinds(plan) == []
    assert verdict_of(plan, key.arn) is Verdict.NOT_SPIRE
    assert anomalies(plan, key.arn) == {Anomaly.NOT_SPIRE_KEY}
    assert why in plan.findings[0].detail


@pytest.mark.parametrize("spec", spire.KEY_SPECS)
def test_every_spire_key_spec_is_reclaimable(spec: str) -> None:
    assert_reclaimed(reclaim(peer(1, meta_fields={"key_spec": spec})), key_arn(1))


# --- the daemon's mark: interrupted reclaims versus restores (contract §6.4) ---------------------


def test_a_recent_mark_is_an_interrupted_reclaim_and_is_completed() -> None:
    key = marked(1, "dead", NOW - HOUR)
    plan = reclaim(key)
    assert verdict_of(plan, key.arn) is Verdict.RECLAIMING
    assert kinds(plan, key.arn) == [ActionKind.SCHEDULE_DELETION]


def test_an_old_mark_on_an_enabled_key_is_an_operators_restore() -> None:
    """Twelve keys reclaimed weeks ago, then restored (CancelKeyDeletion + EnableKey) without
    re-tagging: they look stale and marked, but the daemon never deletes them again."""
    policy = replace(LOOSE, max_reclaims=3)
    restored = [marked(n, "dead", NOW - 20 * DAY) for n in range(12)]
    plan = reclaim(*restored, policy=policy)
    assert plan.actions == ()
    assert {verdict_of(plan, k.arn) for k in restored} == {Verdict.RESTORED}
    assert anomalies(plan) == {Anomaly.RESTORED_KEY}


def test_a_mark_just_inside_the_window_is_completed_and_just_outside_is_a_restore() -> None:
    policy = LOOSE
    inside = marked(1, "dead", NOW - policy.mark_window + timedelta(seconds=1))
    outside = marked(2, "dead", NOW - policy.mark_window)
    plan = reclaim(inside, outside, policy=policy)
    assert verdict_of(plan, inside.arn) is Verdict.RECLAIMING
    assert verdict_of(plan, outside.arn) is Verdict.RESTORED


@pytest.mark.parametrize(
    "mark", [None, "yesterday", "1.5", str(unix(NOW + DAY))], ids=["none", "junk", "frac", "future"]
)
def test_spire_active_false_without_a_valid_mark_is_left_alone(mark: str | None) -> None:
    """SPIRE, an operator or a third party wrote spire-active=false: not the daemon's run."""
    extra = {spire.TAG_MARKED_AT: mark} if mark is not None else {}
    key = stale(1, "dead", active="false", extra=extra)
    plan = reclaim(key)
    assert plan.actions == ()
    assert verdict_of(plan, key.arn) is Verdict.INACTIVE
    assert anomalies(plan, key.arn) == {Anomaly.INACTIVE_UNMARKED}


def test_marks_carry_awss_time_and_go_with_spire_active_false() -> None:
    plan = reclaim(peer(1))
    mark, schedule = plan.actions
    assert dict(mark.tags) == {"spire-active": "false", spire.TAG_MARKED_AT: str(unix(NOW))}
    assert schedule.kind is ActionKind.SCHEDULE_DELETION
    assert not spire.TAG_MARKED_AT.lower().startswith("spire-")  # outside SPIRE's prefix


# --- the blast radius, in servers (contract §6.6) -----------------------------------------------


def test_a_run_leaving_most_servers_without_a_live_key_is_refused_whole() -> None:
    keys = [stale(1, "a"), stale(2, "b"), marked(3, "b", NOW - HOUR), fresh(4, "c")]
    policy = replace(LOOSE, max_reclaim_fraction=0.5)
    plan = reclaim(*keys, policy=policy)
    assert plan.refusal is Refusal.BLAST_RADIUS
    assert plan.actions == ()  # the completion too: refused whole
    assert "2 of the trust domain's 3 servers" in plan.refusal_detail


def test_half_of_the_servers_is_not_more_than_half() -> None:
    keys = [stale(1, "a"), stale(2, "a"), fresh(3, "b")]
    plan = reclaim(*keys, policy=replace(LOOSE, max_reclaim_fraction=0.5))
    assert plan.refusal is None
    assert len(plan.actions) == 4


def test_a_live_servers_old_key_does_not_count_it_dead() -> None:
    keys = [stale(1, "a"), fresh(2, "a"), fresh(3, "b")]  # a rotated: its old key went stale
    plan = reclaim(*keys, policy=replace(LOOSE, max_reclaim_fraction=0.1))
    assert plan.refusal is None
    assert_reclaimed(plan, keys[0].arn)


def test_junk_and_pending_keys_do_not_inflate_the_denominator() -> None:
    """Keys tagged only spire-server-td + spire-active=true, and fresh keys of invented servers
    that are pending deletion, would turn a refused run into an allowed one."""
    dead = [stale(1, "a"), stale(2, "b")]
    live = [fresh(3, "c")]
    junk = [
        ObservedKey(key_arn(100 + n), {"spire-server-td": "example.org", "spire-active": "true"})
        for n in range(10)
    ]
    ghosts = [
        make_key(200 + n, server=f"ghost-{n}", last_update=STAMP, state=KEY_STATE_PENDING_DELETION)
        for n in range(10)
    ]
    disabled = [make_key(300, server="d", last_update=STAMP, state=KEY_STATE_DISABLED)]
    policy = replace(LOOSE, max_reclaim_fraction=0.5)
    assert reclaim(*dead, *live, policy=policy).refusal is Refusal.BLAST_RADIUS
    inflated = reclaim(*dead, *live, *junk, *ghosts, *disabled, policy=policy)
    assert inflated.refusal is Refusal.BLAST_RADIUS, inflated.refusal_detail
    assert "2 of the trust domain's 3 servers" in inflated.refusal_detail


def test_a_server_counts_only_through_a_key_known_to_be_enabled() -> None:
    # Fresh keys not described: the guard cannot count their servers in yet.
    dead = stale(1, "a")
    undescribed = [
        make_key(10 + n, server=f"s{n}", last_update=STAMP, described=False) for n in range(3)
    ]
    policy = replace(LOOSE, max_reclaim_fraction=0.5)
    plan = reclaim(dead, *undescribed, policy=policy)
    assert plan.refusal is Refusal.BLAST_RADIUS  # 1 of 1 known server
    # ...and asks for just enough of them to tell: one more server makes it 1 of 2.
    snapshot = reclaim_snapshot(dead, *undescribed)
    judged = judge_all(snapshot, NOW, policy)
    wanted = fraction_reads(snapshot, judged.verdicts, judged.proposal, (), 0.5)
    assert [k.arn for k in wanted] == [undescribed[0].arn]
    described = [make_key(10, server="s0", last_update=STAMP), *undescribed[1:]]
    snapshot = reclaim_snapshot(dead, *described)
    judged = judge_all(snapshot, NOW, policy)
    assert fraction_reads(snapshot, judged.verdicts, judged.proposal, (), 0.5) == []
    assert reclaim(dead, *described, policy=policy).refusal is None  # 1 of 2
    # A stricter share asks for more; one that cannot be met asks for every server there is.
    wanted = fraction_reads(snapshot, judged.verdicts, judged.proposal, (), 0.25)
    assert [k.arn for k in wanted] == [undescribed[1].arn, undescribed[2].arn]


def test_a_touched_server_with_fresh_keys_is_asked_whether_it_is_alive() -> None:
    """A server with one stale key and an undescribed fresh one: is it alive?"""
    old, new = stale(1, "a"), make_key(2, server="a", last_update=STAMP, described=False)
    snapshot = reclaim_snapshot(old, new)
    judged = judge_all(snapshot, NOW, LOOSE)
    assert [k.arn for k in fraction_reads(snapshot, judged.verdicts, judged.proposal)] == [new.arn]
    described = make_key(2, server="a", last_update=STAMP)
    plan = reclaim(old, described, policy=replace(LOOSE, max_reclaim_fraction=0.1))
    assert plan.refusal is None  # a is alive: reclaiming its old key leaves no server dead


def test_nothing_is_asked_for_when_nothing_would_be_reclaimed() -> None:
    keys = [make_key(n, server=f"s{n}", last_update=STAMP, described=False) for n in range(3)]
    snapshot = reclaim_snapshot(*keys)
    judged = judge_all(snapshot, NOW, LOOSE)
    assert fraction_reads(snapshot, judged.verdicts, judged.proposal) == []


def test_fraction_limit_is_decimal_not_binary() -> None:
    # 0.57 * 100 is 56.99999999999999 in binary floating point; 57 of 100 is not more than 57 %
    policy = replace(LOOSE, max_reclaim_fraction=0.57)
    dead = [stale(n, f"dead-{n}") for n in range(57)]
    live = [fresh(100 + n, f"live-{n}") for n in range(43)]
    assert reclaim(*dead, *live, policy=policy).refusal is None
    more = [stale(n, f"dead-{n}") for n in range(58)]
    assert reclaim(*more, *live[:42], policy=policy).refusal is Refusal.BLAST_RADIUS


def test_blast_radius_guard_passes_an_empty_proposal() -> None:
    snapshot = reclaim_snapshot(stale(1, "a"))
    judged = judge_all(snapshot, NOW, LOOSE)
    empty = replace(judged.proposal, new=(), completions=())
    assert (
        blast_radius_guard(GuardRun(snapshot, judged.verdicts, NOW, LOOSE), empty).refusal is None
    )


# --- the budget, fleet-wide and over time (contract §6.6) ---------------------------------------


def test_keys_scheduled_by_any_daemon_within_the_window_spend_the_budget() -> None:
    """Retries and peers each used to get a fresh budget; now what is spent is read from AWS."""
    policy = replace(LOOSE, max_reclaims=2)
    gone = [pending(1, "d1", NOW - HOUR), pending(2, "d2", NOW - 10 * HOUR)]
    dying = [stale(10, "d3"), stale(11, "d4")]
    plan = reclaim(*gone, *dying, policy=policy)
    assert plan.refusal is Refusal.BUDGET
    assert plan.actions == ()
    assert "2 already scheduled in that window" in plan.refusal_detail


def test_scheduled_before_the_window_is_no_longer_spent() -> None:
    policy = replace(LOOSE, max_reclaims=2, window=timedelta(hours=48))
    old = [pending(1, "d1", NOW - 49 * HOUR), pending(2, "d2", NOW - 48 * HOUR)]
    plan = reclaim(*old, stale(10, "d3"), policy=policy)
    assert plan.refusal is None
    assert_reclaimed(plan, key_arn(10))


def test_without_a_mark_the_deletion_date_tells_at_the_latest_when_it_was_scheduled() -> None:
    # Scheduled 6 days ago with a 30-day window: DeletionDate is 24 days ahead. Read as a 7-day
    # window, it looks scheduled 17 days ahead: counted, never under-counted.
    key = stale(1, "d", active="false", state=KEY_STATE_PENDING_DELETION)
    assert key.meta is not None
    key = replace(key, meta=replace(key.meta, deletion_date=NOW + 24 * DAY))
    assert len(spent(reclaim_snapshot(key), NOW, LOOSE)) == 1
    unknown = stale(2, "d", active="false", state=KEY_STATE_PENDING_DELETION)
    assert len(spent(reclaim_snapshot(unknown), NOW, LOOSE)) == 1  # no date: now
    enabled_false = marked(3, "d", NOW - HOUR)  # not scheduled yet: a completion, not spent
    rotated = fresh(4, "d")  # SPIRE's rotation: a key it stamped until it replaced it
    assert rotated.meta is not None
    rotated = replace(rotated, meta=replace(rotated.meta, state=KEY_STATE_PENDING_DELETION))
    assert spent(reclaim_snapshot(enabled_false, rotated), NOW, replace(LOOSE, window=DAY)) == []


def test_what_may_have_been_scheduled_counts_against_the_budget() -> None:
    """Every doubt costs budget: a peer's mark the tagging index does not show yet (the key is
    pending, its tags still say active and stale), SPIRE's own disposal (which schedules and then
    cannot tag), and a marked or stale key whose DescribeKey failed."""
    policy = replace(LOOSE, max_reclaims=3)
    index_lags = stale(1, "d1", state=KEY_STATE_PENDING_DELETION)
    assert index_lags.meta is not None
    index_lags = replace(index_lags, meta=replace(index_lags.meta, deletion_date=NOW + 7 * DAY))
    undescribed_mark = marked(2, "d2", NOW - HOUR, described=False)
    undescribed_stale = stale(3, "d3", described=False)
    unseen = [index_lags, undescribed_mark, undescribed_stale]
    assert len(spent(reclaim_snapshot(*unseen), NOW, policy)) == 3
    plan = reclaim(*unseen, stale(10, "d10"), fresh(99, "live"), policy=policy)
    assert plan.refusal is Refusal.BUDGET
    assert plan.actions == ()
    # a fresh key whose DescribeKey failed is no sign of a reclaim
    assert (
        spent(
            reclaim_snapshot(make_key(4, server="d4", last_update=STAMP, described=False)),
            NOW,
            policy,
        )
        == []
    )


def test_over_the_budget_the_stalest_go_first_and_the_rest_wait() -> None:
    policy = replace(LOOSE, max_reclaims=3)
    ages = {10: 30, 11: 20, 12: 50, 13: 15, 14: 40}  # days since the last stamp
    keys = [stale(n, f"d{n}") for n in ages]
    keys = [
        replace(k, tags={**k.tags, "spire-last-update": lu(NOW - ages[n] * DAY)})
        for n, k in zip(ages, keys, strict=True)
    ]
    keys.append(marked(20, "d20", NOW - HOUR))  # an interrupted reclaim: first in line
    plan = reclaim(*keys, fresh(99, "live"), policy=policy)
    assert plan.refusal is Refusal.BUDGET
    scheduled = [a.arn for a in plan.actions if a.kind is ActionKind.SCHEDULE_DELETION]
    assert scheduled == [key_arn(20), key_arn(12), key_arn(14)]
    assert "reclaiming 3 now (the stalest), holding 3 back" in plan.refusal_detail


def test_the_budget_is_never_exceeded_within_a_window_over_many_runs() -> None:
    """Eight keys crossing the threshold at different times, a run every hour (a retry loop):
    at most max_reclaims are scheduled within any window."""
    policy = replace(LOOSE, max_reclaims=2, window=timedelta(hours=48))
    keys = {n: stale(n, f"d{n}") for n in range(8)}
    scheduled: dict[int, datetime] = {}
    for hour in range(0, 24 * 8):
        now = NOW + hour * HOUR
        world = []
        for n, key in keys.items():
            if n in scheduled:
                world.append(pending(n, f"d{n}", scheduled[n]))
            elif hour >= n * 6:  # key n goes stale n*6 hours in
                world.append(key)
        plan = reclaim(*world, fresh(99, "live"), policy=policy, now=now)
        for action in plan.actions:
            if action.kind is ActionKind.SCHEDULE_DELETION:
                scheduled[int(action.arn[-2:], 16)] = now
        times = sorted(scheduled.values())
        for t in times:
            in_window = [u for u in times if t <= u < t + policy.window]
            assert len(in_window) <= policy.max_reclaims, (hour, times)
    assert len(scheduled) == 8  # and they all went, in time


def test_a_budget_of_zero_reclaims_nothing_and_says_so() -> None:
    plan = reclaim(peer(1), policy=replace(LOOSE, max_reclaims=0))
    assert plan.refusal is Refusal.BUDGET
    assert plan.actions == ()


def test_budget_guard_passes_what_fits() -> None:
    snapshot = reclaim_snapshot(stale(1, "a"), stale(2, "b"))
    judged = judge_all(snapshot, NOW, LOOSE)
    policy = replace(LOOSE, max_reclaims=2)
    decision = budget_guard(GuardRun(snapshot, judged.verdicts, NOW, policy), judged.proposal)
    assert decision.refusal is None
    assert len(decision.proposal) == 2


# --- the re-read of KMS's own tags right before the mark (contract §6.3) ------------------------


def test_a_fresh_stamp_in_kms_the_index_has_not_seen_keeps_the_key() -> None:
    """A server back after two weeks stamps while the reclaim runs; the tagging index still
    shows the old stamp, KMS already holds the new one."""
    key = peer(1)
    mark, schedule = reclaim(key).actions
    kms = {**key.tags, "spire-last-update": STAMP}
    why = confirm(mark, kms, "spire-protect")
    assert why is not None and "spire-last-update" in why
    assert confirm(schedule, kms, "spire-protect") is not None


@pytest.mark.parametrize(
    "change",
    [
        {"spire-protect": "true"},
        {"spire-active": "false"},
        {"spire-server-id": "another"},
        {spire.TAG_MARKED_AT: "1"},
    ],
)
def test_any_change_to_the_tags_it_was_judged_on_keeps_the_key(change: dict[str, str]) -> None:
    key = peer(1)
    mark, _ = reclaim(key).actions
    assert confirm(mark, {**key.tags, **change}, "spire-protect") is not None


def test_unchanged_tags_and_unrelated_ones_let_it_go() -> None:
    key = peer(1, extra={"team": "payments"})
    mark, _ = reclaim(key).actions
    assert confirm(mark, dict(key.tags), "spire-protect") is None
    assert confirm(mark, {**key.tags, "cost-centre": "42"}, "spire-protect") is None


def test_a_completion_is_read_again_too() -> None:
    key = marked(1, "dead", NOW - HOUR)
    (schedule,) = reclaim(key).actions
    assert confirm(schedule, dict(key.tags), "spire-protect") is None
    restored = {**key.tags, "spire-active": "true", "spire-last-update": STAMP}
    assert confirm(schedule, restored, "spire-protect") is not None


def test_plan_reclaim_needs_a_time() -> None:
    with pytest.raises(ValueError, match="aws_time"):
        plan_reclaim(reclaim_snapshot(peer(1), aws_time=None, local_time=None), LOOSE)


def test_policy_defaults_match_the_settings() -> None:
    policy = ReclaimPolicy()
    assert (policy.max_reclaims, policy.max_reclaim_fraction) == (10, 0.5)
    assert policy.window == timedelta(hours=48)
    assert policy.mark_window == policy.window * 1.1
    assert OWN  # this server's keys are covered by the serving rule, in test_plan_reclaim
