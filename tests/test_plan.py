"""The pure planner (SPEC part B): each refresh and reclaim rule, then properties."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from daemon import plan as planner
from daemon import spire
from daemon.model import (
    KEY_STATE_DISABLED,
    KEY_STATE_ENABLED,
    KEY_STATE_PENDING_DELETION,
    Action,
    ActionKind,
    AliasMeta,
    Anomaly,
    Job,
    KeyMeta,
    Liveness,
    ObservedKey,
    Plan,
    ProbeFailure,
    ReclaimSnapshot,
    RefreshSnapshot,
    Refusal,
    Verdict,
)
from daemon.plan import (
    ReclaimPolicy,
    RefreshPolicy,
    blast_radius,
    check_clock,
    choose_serving,
    key_id_from_arn,
    needs_aliases,
    needs_state,
    plan_reclaim,
    plan_refresh,
)
from tests.strategies import (
    ALIVE,
    DAY,
    NOW,
    OTHER_TD,
    OWN,
    PEER,
    STALE_AFTER,
    TD,
    TOLERANCE,
    ReclaimWorld,
    RefreshWorld,
    apply_reclaim,
    apply_refresh,
    key_arn,
    lu,
    make_alias_target,
    make_key,
    make_meta,
    reclaim_worlds,
    refresh_worlds,
    serving_arns,
    spire_alias,
    unix,
)

ACME = "bundle-acme-foo.bar+rsa"
STAMP = str(int(NOW.timestamp()))
CUTOFF = NOW - STALE_AFTER
ANCIENT = "1000"

#: Guards wide open, for the tests of one staleness rule at a time.
LOOSE = ReclaimPolicy(max_reclaims_per_run=1000, max_reclaim_fraction=1.0)

property_settings = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --- helpers ------------------------------------------------------------------------------------


def refresh(
    *keys: ObservedKey,
    aliases: tuple = (),
    policy: RefreshPolicy | None = None,
    now: datetime = NOW,
) -> Plan:
    snapshot = RefreshSnapshot(TD, OWN, tuple(keys), tuple(aliases), ALIVE)
    return plan_refresh(snapshot, now, policy or RefreshPolicy())


def reclaim(
    *keys: ObservedKey,
    own_aliases: tuple = (),
    policy: ReclaimPolicy | None = None,
    now: datetime = NOW,
    aws_time: datetime | str | None = "now",
) -> Plan:
    seen = now if aws_time == "now" else aws_time
    assert not isinstance(seen, str)
    snapshot = ReclaimSnapshot(TD, OWN, tuple(keys), tuple(own_aliases), seen)
    return plan_reclaim(snapshot, now, policy or LOOSE)


def peer(n: int, **kwargs: object) -> ObservedKey:
    """A key of another server of this TD, stale by default."""
    kwargs.setdefault("server", PEER)
    kwargs.setdefault("last_update", ANCIENT)
    return make_key(n, **kwargs)  # type: ignore[arg-type]


def kinds(plan: Plan, arn: str | None = None) -> list[ActionKind]:
    return [a.kind for a in plan.actions if arn is None or a.arn == arn]


def verdict_of(plan: Plan, arn: str) -> Verdict:
    found = [v.verdict for v in plan.verdicts if v.arn == arn]
    assert len(found) == 1, found
    return found[0]


def anomalies(plan: Plan, arn: str | None = None) -> set[Anomaly]:
    return {f.anomaly for f in plan.findings if arn is None or f.arn == arn}


def actions_of(plan: Plan, kind: ActionKind) -> list[Action]:
    return [a for a in plan.actions if a.kind is kind]


def assert_reclaimed(plan: Plan, arn: str) -> None:
    assert plan.refusal is None
    assert kinds(plan, arn) == [ActionKind.MARK_INACTIVE, ActionKind.SCHEDULE_DELETION]


def assert_kept(plan: Plan, arn: str, verdict: Verdict | None = None) -> None:
    assert kinds(plan, arn) == []
    if verdict is not None:
        assert verdict_of(plan, arn) is verdict


# --- helpers and small functions ----------------------------------------------------------------


def test_key_id_from_arn() -> None:
    assert key_id_from_arn(key_arn(7)) == "00000007-0000-4000-8000-000000000007"
    assert key_id_from_arn("1234abcd-12ab-34cd-56ef-1234567890ab") == (
        "1234abcd-12ab-34cd-56ef-1234567890ab"
    )


def test_stamp_is_truncated_unix_seconds() -> None:
    assert NOW.microsecond != 0
    assert STAMP == str(unix(NOW)) == "1767268800"


# --- B.1 refresh --------------------------------------------------------------------------------


def test_serving_key_stamped_with_now() -> None:
    key = make_key(1, key_id=ACME, last_update=lu(NOW - DAY))
    plan = refresh(key)
    assert plan.job is Job.REFRESH
    assert plan.refusal is None
    (stamp,) = plan.actions
    assert stamp.kind is ActionKind.STAMP
    assert stamp.arn == key.arn
    assert stamp.key_id == "00000001-0000-4000-8000-000000000001"
    assert dict(stamp.tags) == {"spire-last-update": STAMP}
    assert stamp.spire_key_id == ACME
    assert stamp.server_id == OWN
    assert verdict_of(plan, key.arn) is Verdict.SERVING


def test_stamp_when_last_update_missing_or_malformed() -> None:
    for value in (None, "garbage", "-5"):
        key = make_key(1, last_update=value)
        assert kinds(refresh(key)) == [ActionKind.STAMP]


def test_already_stamped_key_not_stamped_again() -> None:
    plan = refresh(make_key(1, last_update=STAMP))
    assert plan.actions == ()
    assert verdict_of(plan, key_arn(1)) is Verdict.SERVING


def test_serving_alias_refreshed() -> None:
    key = make_key(1, key_id=ACME, last_update=lu(NOW - DAY))
    alias = make_alias_target(ACME, key.meta)
    plan = refresh(key, aliases=(alias,))
    assert sorted(kinds(plan)) == sorted([ActionKind.STAMP, ActionKind.REFRESH_ALIAS])
    (update,) = actions_of(plan, ActionKind.REFRESH_ALIAS)
    assert update.alias_name == spire.alias_name(TD, OWN, ACME)
    assert update.alias_name.endswith("/bundle-acme-foo_2ebar_2brsa")
    assert update.arn == key.arn
    assert update.spire_key_id == ACME
    # the alias is refreshed on every run: bumping LastUpdatedDate is the point
    assert kinds(refresh(make_key(1, key_id=ACME, last_update=STAMP), aliases=(alias,))) == [
        ActionKind.REFRESH_ALIAS
    ]


def test_alias_target_wins_over_newer_tagged_key() -> None:
    old = make_key(1, created=NOW - 90 * DAY, last_update=lu(NOW - DAY))
    new = make_key(2, created=NOW - DAY, last_update=lu(NOW - DAY))
    plan = refresh(old, new, aliases=(make_alias_target("x509-CA-A", old.meta),))
    assert kinds(plan, old.arn) == [ActionKind.STAMP, ActionKind.REFRESH_ALIAS]
    assert kinds(plan, new.arn) == []
    assert verdict_of(plan, old.arn) is Verdict.SERVING
    assert verdict_of(plan, new.arn) is Verdict.SUPERSEDED
    assert anomalies(plan, new.arn) == {Anomaly.SUPERSEDED}


def test_newest_creation_date_wins_without_alias() -> None:
    old = make_key(1, created=NOW - 90 * DAY, last_update=lu(NOW - DAY))
    new = make_key(2, created=NOW - DAY, last_update=lu(NOW - 30 * DAY))
    older = make_key(3, created=NOW - 200 * DAY, last_update=STAMP)
    plan = refresh(old, new, older)
    assert plan.actions == (
        Action(
            ActionKind.STAMP,
            new.arn,
            new.meta.key_id if new.meta else "",
            plan.actions[0].reason,
            "x509-CA-A",
            OWN,
            {"spire-last-update": STAMP},
        ),
    )
    for superseded in (old, older):
        assert verdict_of(plan, superseded.arn) is Verdict.SUPERSEDED
        assert anomalies(plan, superseded.arn) == {Anomaly.SUPERSEDED}


def test_newest_wins_whatever_the_order_observed() -> None:
    keys = [make_key(n, created=NOW - n * DAY, last_update=ANCIENT) for n in range(1, 5)]
    for ordering in (keys, keys[::-1], keys[1:] + keys[:1]):
        plan = refresh(*ordering)
        assert [a.arn for a in plan.actions] == [key_arn(1)]


def test_key_ids_planned_independently() -> None:
    a = make_key(1, key_id="x509-CA-A", last_update=ANCIENT)
    b = make_key(2, key_id="JWT-Signer-A", last_update=ANCIENT)
    plan = refresh(a, b)
    assert {(x.arn, x.spire_key_id) for x in plan.actions} == {
        (a.arn, "x509-CA-A"),
        (b.arn, "JWT-Signer-A"),
    }


@pytest.mark.parametrize("state", [KEY_STATE_DISABLED, KEY_STATE_PENDING_DELETION, "Unavailable"])
def test_not_enabled_keys_left_alone(state: str) -> None:
    off = make_key(1, created=NOW - DAY, state=state, last_update=ANCIENT)
    on = make_key(2, created=NOW - 90 * DAY, last_update=ANCIENT)
    plan = refresh(off, on)
    assert kinds(plan, off.arn) == []
    assert kinds(plan, on.arn) == [ActionKind.STAMP]  # the older one serves
    assert verdict_of(plan, off.arn) is Verdict.NOT_ENABLED
    if state != KEY_STATE_PENDING_DELETION:
        assert Anomaly.NOT_ENABLED in anomalies(plan, off.arn)


def test_only_disabled_keys_nothing_to_do() -> None:
    plan = refresh(make_key(1, state=KEY_STATE_DISABLED, last_update=ANCIENT))
    assert plan.actions == ()
    assert verdict_of(plan, key_arn(1)) is Verdict.NOT_ENABLED


def test_undescribed_key_not_stamped() -> None:
    plan = refresh(make_key(1, described=False, last_update=ANCIENT))
    assert plan.actions == ()
    assert verdict_of(plan, key_arn(1)) is Verdict.UNKNOWN
    assert Anomaly.NOT_DESCRIBED in anomalies(plan, key_arn(1))


def test_legacy_alias_target_migrated_with_all_five_tags() -> None:
    legacy = make_meta(9, created=NOW - 400 * DAY)
    alias = make_alias_target(ACME, legacy)
    assert alias.alias_name.endswith("/bundle-acme-foo_2ebar_2brsa")
    plan = refresh(aliases=(alias,))
    (migrate,) = actions_of(plan, ActionKind.MIGRATE)
    assert migrate.arn == legacy.arn
    assert migrate.key_id == legacy.key_id
    assert dict(migrate.tags) == {
        "spire-server-td": TD,
        "spire-server-id": OWN,
        "spire-active": "true",
        "spire-key-id": ACME,  # decoded from the alias name
        "spire-last-update": STAMP,
    }
    assert migrate.spire_key_id == ACME
    assert verdict_of(plan, legacy.arn) is Verdict.LEGACY
    assert actions_of(plan, ActionKind.STAMP) == []  # MIGRATE already sets last-update
    (update,) = actions_of(plan, ActionKind.REFRESH_ALIAS)
    assert (update.arn, update.alias_name) == (legacy.arn, alias.alias_name)


def test_legacy_target_supersedes_tagged_keys() -> None:
    legacy = make_meta(9, created=NOW - 400 * DAY)
    tagged = make_key(1, created=NOW - DAY, last_update=ANCIENT)
    plan = refresh(tagged, aliases=(make_alias_target("x509-CA-A", legacy),))
    assert kinds(plan, legacy.arn) == [ActionKind.MIGRATE, ActionKind.REFRESH_ALIAS]
    assert kinds(plan, tagged.arn) == []
    assert verdict_of(plan, tagged.arn) is Verdict.SUPERSEDED


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        ("spire-server-td", "other.example.org"),
        ("spire-server-id", "another-server"),
        ("spire-key-id", "JWT-Signer-B"),
    ],
)
def test_alias_target_tagged_for_another_owner_not_migrated(tag: str, value: str) -> None:
    legacy = make_meta(9, created=NOW - 400 * DAY)
    alias = replace(make_alias_target(ACME, legacy), target_tags={tag: value})
    plan = refresh(aliases=(alias,))
    assert actions_of(plan, ActionKind.MIGRATE) == []
    assert Anomaly.LEGACY_NOT_MIGRATED in anomalies(plan, legacy.arn)


def test_alias_target_with_unknown_tags_not_migrated() -> None:
    legacy = make_meta(9, created=NOW - 400 * DAY)
    alias = replace(make_alias_target(ACME, legacy), target_tags=None)
    plan = refresh(aliases=(alias,))
    assert actions_of(plan, ActionKind.MIGRATE) == []
    assert Anomaly.LEGACY_NOT_MIGRATED in anomalies(plan, legacy.arn)


def test_own_alias_target_marked_inactive_is_reactivated() -> None:
    """This server's alias points to it, so it serves: all five tags are written again."""
    legacy = make_meta(9, created=NOW - 400 * DAY)
    tags = {
        "spire-server-td": TD,
        "spire-server-id": OWN,
        "spire-key-id": ACME,
        "spire-active": "false",
    }
    alias = replace(make_alias_target(ACME, legacy), target_tags=tags)
    (migrate,) = actions_of(refresh(aliases=(alias,)), ActionKind.MIGRATE)
    assert migrate.tags["spire-active"] == "true"


def test_migration_off_reports_legacy() -> None:
    legacy = make_meta(9)
    plan = refresh(
        aliases=(make_alias_target(ACME, legacy),),
        policy=RefreshPolicy(migrate_legacy_aliases=False),
    )
    assert actions_of(plan, ActionKind.MIGRATE) == []
    assert actions_of(plan, ActionKind.STAMP) == []
    assert anomalies(plan, legacy.arn) == {Anomaly.LEGACY_NOT_MIGRATED}
    assert verdict_of(plan, legacy.arn) is Verdict.LEGACY


def test_alias_refresh_off() -> None:
    key = make_key(1, last_update=ANCIENT)
    legacy = make_meta(9)
    plan = refresh(
        key,
        aliases=(
            make_alias_target("x509-CA-A", key.meta),
            make_alias_target("JWT-Signer-A", legacy),
        ),
        policy=RefreshPolicy(refresh_aliases=False),
    )
    assert actions_of(plan, ActionKind.REFRESH_ALIAS) == []
    assert sorted(kinds(plan)) == sorted([ActionKind.STAMP, ActionKind.MIGRATE])


def test_alias_rotated_by_a_replica_is_never_reverted() -> None:
    # Our planner would pick key 1 (newest), but the alias now points to key 2: the alias wins
    # and nothing ever points the alias back at key 1.
    ours = make_key(1, created=NOW - DAY, last_update=STAMP)
    rotated = make_key(2, created=NOW - 30 * DAY, last_update=ANCIENT)
    alias = make_alias_target("x509-CA-A", rotated.meta)
    plan = refresh(ours, rotated, aliases=(alias,))
    for action in plan.actions:
        if action.alias_name is not None:
            assert action.arn == rotated.arn
    assert kinds(plan, ours.arn) == []
    assert verdict_of(plan, rotated.arn) is Verdict.SERVING


def test_alias_to_untagged_key_of_replica_never_reverted() -> None:
    ours = make_key(1, created=NOW - DAY, last_update=STAMP)
    replica = make_meta(9, created=NOW - 3 * DAY)
    plan = refresh(ours, aliases=(make_alias_target("x509-CA-A", replica),))
    for action in plan.actions:
        if action.alias_name is not None:
            assert action.arn == replica.arn
    assert all(a.arn == replica.arn for a in plan.actions)


def test_tagged_key_without_key_id_skipped() -> None:
    for key_id in (None, ""):
        key = make_key(1, key_id=key_id, last_update=ANCIENT)
        plan = refresh(key)
        assert plan.actions == ()
        assert anomalies(plan, key.arn) == {Anomaly.MISSING_KEY_ID}


def test_disabled_alias_target_falls_back_to_newest_enabled_tagged_key() -> None:
    target = make_key(1, created=NOW - DAY, state=KEY_STATE_DISABLED, last_update=ANCIENT)
    older = make_key(2, created=NOW - 90 * DAY, last_update=ANCIENT)
    oldest = make_key(3, created=NOW - 190 * DAY, last_update=ANCIENT)
    alias = make_alias_target("x509-CA-A", target.meta)
    plan = refresh(target, older, oldest, aliases=(alias,))
    assert kinds(plan) == [ActionKind.STAMP]
    assert plan.actions[0].arn == older.arn
    assert actions_of(plan, ActionKind.REFRESH_ALIAS) == []  # never repointed either
    assert Anomaly.NOT_ENABLED in anomalies(plan, target.arn)
    assert verdict_of(plan, older.arn) is Verdict.SERVING


def test_disabled_legacy_alias_target_not_migrated() -> None:
    legacy = make_meta(9, state=KEY_STATE_DISABLED)
    plan = refresh(aliases=(make_alias_target(ACME, legacy),))
    assert plan.actions == ()
    assert Anomaly.NOT_ENABLED in anomalies(plan, legacy.arn)


def test_missing_alias_falls_back_to_newest() -> None:
    key = make_key(1, last_update=ANCIENT)
    plan = refresh(key, aliases=(make_alias_target("x509-CA-A", None),))
    assert kinds(plan) == [ActionKind.STAMP]


def test_alias_target_tagged_for_another_key_id_not_retagged() -> None:
    # alias for x509-CA-B points to the key tagged x509-CA-A: migrating it would steal it
    a = make_key(1, key_id="x509-CA-A", last_update=STAMP)
    alias_b = make_alias_target("x509-CA-B", a.meta)
    plan = refresh(a, aliases=(alias_b,))
    assert actions_of(plan, ActionKind.MIGRATE) == []
    for action in plan.actions:
        assert spire.TAG_KEY_ID not in action.tags
    assert Anomaly.LEGACY_NOT_MIGRATED in anomalies(plan, a.arn)


def test_two_aliases_on_one_tagged_key_are_stable() -> None:
    a = make_key(1, key_id="x509-CA-A", last_update=ANCIENT)
    aliases = (make_alias_target("x509-CA-A", a.meta), make_alias_target("x509-CA-B", a.meta))
    snapshot = RefreshSnapshot(TD, OWN, (a,), aliases, ALIVE)
    first = plan_refresh(snapshot, NOW, RefreshPolicy())
    second = plan_refresh(apply_refresh(snapshot, first), NOW, RefreshPolicy())
    assert kinds(second, a.arn).count(ActionKind.STAMP) == 0
    assert actions_of(second, ActionKind.MIGRATE) == []


def test_refresh_is_idempotent_after_migration() -> None:
    legacy = make_meta(9)
    key = make_key(1, key_id="JWT-Signer-A", last_update=ANCIENT)
    snapshot = RefreshSnapshot(
        TD,
        OWN,
        (key,),
        (make_alias_target(ACME, legacy), make_alias_target("JWT-Signer-A", None)),
        ALIVE,
    )
    first = plan_refresh(snapshot, NOW, RefreshPolicy())
    assert sorted(kinds(first)) == sorted(
        [ActionKind.MIGRATE, ActionKind.STAMP, ActionKind.REFRESH_ALIAS]
    )
    after = apply_refresh(snapshot, first)
    second = plan_refresh(after, NOW, RefreshPolicy())
    assert kinds(second) == [ActionKind.REFRESH_ALIAS]
    assert verdict_of(second, legacy.arn) is Verdict.SERVING


# --- B.0 a keep-alive means alive ---------------------------------------------------------------


def refresh_with(liveness: Liveness | None, *keys: ObservedKey, observed: bool = True) -> Plan:
    snapshot = RefreshSnapshot(TD, OWN, tuple(keys), (), liveness, observed=observed)
    return plan_refresh(snapshot, NOW, RefreshPolicy())


@pytest.mark.parametrize(
    "liveness",
    [
        None,
        Liveness(False, "HTTP 503 from http://x/live", "http://x/live", ProbeFailure.HTTP_STATUS),
    ],
    ids=["not-probed", "not-alive"],
)
def test_nothing_is_written_for_a_spire_server_not_known_to_be_alive(
    liveness: Liveness | None,
) -> None:
    key = make_key(1, key_id="x509-CA-A", last_update=lu(NOW - DAY))
    alive = refresh_with(ALIVE, key)
    assert kinds(alive) == [ActionKind.STAMP]
    plan = refresh_with(liveness, key)
    assert plan.actions == ()
    assert plan.refusal is Refusal.SPIRE_NOT_ALIVE
    assert plan.verdicts == alive.verdicts  # what it found is still reported
    assert "would have made: stamp 1" in plan.refusal_detail
    if liveness is not None:
        assert liveness.detail in plan.refusal_detail
    else:
        assert "not probed" in plan.refusal_detail


def test_a_refusal_before_any_read_says_so() -> None:
    down = Liveness(False, "connection refused by http://x/live", "http://x/live")
    plan = refresh_with(down, observed=False)
    assert plan.refusal is Refusal.SPIRE_NOT_ALIVE
    assert plan.failure is None  # not "no key found": nothing was looked for
    assert "AWS was not even read" in plan.refusal_detail


def test_finding_no_key_of_this_server_is_a_failure() -> None:
    plan = refresh_with(ALIVE)
    assert plan.refusal is None
    assert plan.failure is not None
    assert plan.failure.startswith("no key of this server found: no key tagged ")
    assert f"spire-server-id={OWN}" in plan.failure
    assert f"alias/SPIRE_SERVER/example_org/{OWN}/*" in plan.failure
    off = plan_refresh(
        RefreshSnapshot(TD, OWN, (), (), ALIVE),
        NOW,
        RefreshPolicy(migrate_legacy_aliases=False),
    )
    assert off.failure is not None and "migrate_legacy_aliases = false" in off.failure
    # An alias whose key is gone is not a key found; one whose key is pending deletion is.
    missing = RefreshSnapshot(TD, OWN, (), (make_alias_target("x509-CA-A", None),), ALIVE)
    assert plan_refresh(missing, NOW, RefreshPolicy()).failure is not None
    pending = make_meta(3, state="PendingDeletion")
    found = RefreshSnapshot(TD, OWN, (), (make_alias_target("x509-CA-A", pending),), ALIVE)
    assert plan_refresh(found, NOW, RefreshPolicy()).failure is None


# --- B.2 reclaim: staleness ---------------------------------------------------------------------


def test_stale_peer_key_marked_then_scheduled() -> None:
    key = peer(1)
    plan = reclaim(key)
    assert plan.job is Job.RECLAIM
    assert_reclaimed(plan, key.arn)
    mark, schedule = plan.actions
    assert dict(mark.tags) == {"spire-active": "false"}
    assert mark.key_id == schedule.key_id == "00000001-0000-4000-8000-000000000001"
    assert mark.server_id == schedule.server_id == PEER
    assert mark.spire_key_id == "x509-CA-A"
    assert dict(schedule.tags) == {}
    assert verdict_of(plan, key.arn) is Verdict.STALE


def test_last_update_exactly_stale_after_ago_is_stale() -> None:
    key = peer(1, last_update=lu(CUTOFF))
    assert_reclaimed(reclaim(key), key.arn)


def test_last_update_one_second_later_is_fresh() -> None:
    key = peer(1, last_update=str(unix(CUTOFF) + 1))
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.FRESH)
    assert plan.findings == ()


@pytest.mark.parametrize("micro", [0, 1, 500_000, 999_999])
def test_stale_boundary_with_fractional_now(micro: int) -> None:
    now = datetime(2026, 3, 1, 8, 30, 15, micro, tzinfo=UTC)
    boundary = int((now - STALE_AFTER).timestamp())
    assert_reclaimed(reclaim(peer(1, last_update=str(boundary)), now=now), key_arn(1))
    assert_kept(reclaim(peer(1, last_update=str(boundary + 1)), now=now), key_arn(1))


def test_custom_stale_after() -> None:
    policy = replace(LOOSE, stale_after=timedelta(days=3))
    created = NOW - 4 * DAY
    assert_reclaimed(
        reclaim(peer(1, last_update=lu(NOW - 3 * DAY), created=created), policy=policy),
        key_arn(1),
    )
    assert_kept(
        reclaim(peer(1, last_update=str(unix(NOW - 3 * DAY) + 1), created=created), policy=policy),
        key_arn(1),
    )


def test_missing_last_update_is_stale() -> None:
    key = peer(1, last_update=None)
    assert_reclaimed(reclaim(key), key.arn)


@pytest.mark.parametrize(
    "value", ["1.5", " 12", "12 ", "0x10", "+5", "-5", "", "0012", str(2**63), "١٢", "x" * 256]
)
def test_malformed_last_update_never_stale(value: str) -> None:
    key = peer(1, last_update=value)
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.MALFORMED)
    assert anomalies(plan, key.arn) == {Anomaly.MALFORMED_LAST_UPDATE}


def test_future_last_update_beyond_tolerance_never_stale() -> None:
    key = peer(1, last_update=str(unix(NOW + TOLERANCE) + 1))
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.FUTURE)
    assert anomalies(plan, key.arn) == {Anomaly.FUTURE_LAST_UPDATE}
    far = peer(2, last_update=str(2**63 - 1))
    assert_kept(reclaim(far), far.arn, Verdict.FUTURE)


def test_future_last_update_within_tolerance_is_fresh() -> None:
    for value in (unix(NOW + TOLERANCE), unix(NOW) + 1, unix(NOW)):
        key = peer(1, last_update=str(value))
        plan = reclaim(key)
        assert_kept(plan, key.arn, Verdict.FRESH)
        assert plan.findings == ()


def test_own_serving_key_never_reclaimed_even_ancient() -> None:
    own = make_key(1, last_update="0")
    plan = reclaim(own)
    assert_kept(plan, own.arn, Verdict.SERVING)
    missing = make_key(2, key_id="JWT-Signer-A", last_update=None)
    assert_kept(reclaim(missing), missing.arn, Verdict.SERVING)


def test_own_serving_key_by_alias_never_reclaimed() -> None:
    by_alias = make_key(1, created=NOW - 300 * DAY, last_update=ANCIENT)
    newer = make_key(2, created=NOW - 30 * DAY, last_update=ANCIENT)
    plan = reclaim(by_alias, newer, own_aliases=(make_alias_target("x509-CA-A", by_alias.meta),))
    assert_kept(plan, by_alias.arn, Verdict.SERVING)
    assert_reclaimed(plan, newer.arn)


def test_own_alias_target_protected_whatever_its_tags() -> None:
    # our alias points to a key whose tags name another server: it still serves us
    target = peer(1, last_update=ANCIENT)
    plan = reclaim(target, own_aliases=(make_alias_target("x509-CA-A", target.meta),))
    assert_kept(plan, target.arn, Verdict.SERVING)


def test_own_superseded_stale_key_is_reclaimable() -> None:
    old = make_key(1, created=NOW - 200 * DAY, last_update=ANCIENT)
    serving = make_key(2, created=NOW - 30 * DAY, last_update=lu(NOW - DAY))
    plan = reclaim(old, serving)
    assert_reclaimed(plan, old.arn)
    assert_kept(plan, serving.arn, Verdict.FRESH)


def test_own_newest_stale_key_still_serves() -> None:
    # both stale: the newest is this server's serving key, the older one is superseded
    old = make_key(1, created=NOW - 200 * DAY, last_update=ANCIENT)
    new = make_key(2, created=NOW - 30 * DAY, last_update=ANCIENT)
    plan = reclaim(old, new)
    assert_reclaimed(plan, old.arn)
    assert_kept(plan, new.arn, Verdict.SERVING)


def test_own_superseded_key_reclaimable_once_its_siblings_are_described() -> None:
    """The observer describes every sibling of this server's stale-looking keys (observe.py)."""
    old = make_key(1, created=NOW - 200 * DAY, last_update=ANCIENT)
    serving = make_key(2, created=NOW - 30 * DAY, last_update=lu(NOW - DAY))
    assert not needs_state(serving, TD, NOW, ReclaimPolicy())
    assert_reclaimed(reclaim(old, serving), old.arn)


def test_own_stale_key_kept_when_its_sibling_was_not_described() -> None:
    """Without the sibling's state the planner cannot tell which key serves: it keeps both."""
    old = make_key(1, created=NOW - 200 * DAY, last_update=ANCIENT)
    serving = make_key(2, created=NOW - 30 * DAY, last_update=lu(NOW - DAY), described=False)
    assert_kept(reclaim(old, serving), old.arn, Verdict.SERVING)


def test_young_key_kept() -> None:
    young = peer(1, created=NOW - 13 * DAY)
    assert_kept(reclaim(young), young.arn, Verdict.YOUNG)
    boundary = peer(2, created=CUTOFF + timedelta(seconds=1))
    assert_kept(reclaim(boundary), boundary.arn, Verdict.YOUNG)
    unknown = peer(3, created=None)
    assert_kept(reclaim(unknown), unknown.arn, Verdict.YOUNG)


def test_key_created_exactly_stale_after_ago_is_old_enough() -> None:
    key = peer(1, created=CUTOFF)
    assert_reclaimed(reclaim(key), key.arn)


@pytest.mark.parametrize("value", ["true", "TRUE", "True", " true "])
def test_protect_tag_true_kept(value: str) -> None:
    key = peer(1, extra={"spire-protect": value})
    assert_kept(reclaim(key), key.arn, Verdict.PROTECTED)


@pytest.mark.parametrize("value", ["false", "yes", "1", ""])
def test_protect_tag_other_values_do_not_protect(value: str) -> None:
    key = peer(1, extra={"spire-protect": value})
    assert_reclaimed(reclaim(key), key.arn)


def test_custom_protect_tag() -> None:
    policy = replace(LOOSE, protect_tag="team-keep")
    kept = peer(1, extra={"team-keep": "true"})
    default_tag = peer(2, extra={"spire-protect": "true"})
    plan = reclaim(kept, default_tag, policy=policy)
    assert_kept(plan, kept.arn, Verdict.PROTECTED)
    assert_reclaimed(plan, default_tag.arn)


def test_fresh_spire_alias_keeps_key() -> None:
    key = peer(1, aliases=(spire_alias(updated=NOW - DAY),))
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.ALIAS_FRESH)
    just_inside = peer(2, aliases=(spire_alias(updated=CUTOFF + timedelta(seconds=1)),))
    assert_kept(reclaim(just_inside), just_inside.arn, Verdict.ALIAS_FRESH)


def test_spire_alias_of_any_trust_domain_or_server_counts() -> None:
    alias = spire_alias(td=OTHER_TD, server="someone", updated=NOW - DAY)
    key = peer(1, aliases=(alias,))
    assert_kept(reclaim(key), key.arn, Verdict.ALIAS_FRESH)


def test_stale_spire_alias_does_not_keep_key() -> None:
    for updated in (CUTOFF, NOW - 30 * DAY):
        key = peer(1, aliases=(spire_alias(updated=updated, created=updated),))
        assert_reclaimed(reclaim(key), key.arn)


def test_alias_creation_date_used_when_never_updated() -> None:
    key = peer(1, aliases=(spire_alias(updated=None, created=NOW - DAY),))
    assert_kept(reclaim(key), key.arn, Verdict.ALIAS_FRESH)


def test_alias_without_date_keeps_key() -> None:
    key = peer(1, aliases=(spire_alias(updated=None, created=None),))
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.ALIAS_FRESH)
    assert Anomaly.ALIAS_WITHOUT_DATE in anomalies(plan, key.arn)


def test_non_spire_alias_does_not_protect() -> None:
    aliases = (
        AliasMeta("alias/team/app", None, NOW, NOW),
        AliasMeta("alias/SPIRE_SERVERX/example_org/x/y", None, NOW, NOW),
        AliasMeta("alias/spire_server/example_org/x/y", None, None, None),
    )
    key = peer(1, aliases=aliases)
    assert_reclaimed(reclaim(key), key.arn)


def test_aliases_not_listed_keeps_key() -> None:
    key = peer(1, aliases=None)
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.UNKNOWN)
    assert Anomaly.NOT_DESCRIBED in anomalies(plan, key.arn)


def test_state_not_described_keeps_key() -> None:
    key = peer(1, described=False)
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.UNKNOWN)
    assert Anomaly.NOT_DESCRIBED in anomalies(plan, key.arn)


@pytest.mark.parametrize("active", ["true", "false"])
def test_pending_deletion_counts_as_reclaimed(active: str) -> None:
    key = peer(1, active=active, state=KEY_STATE_PENDING_DELETION)
    assert_kept(reclaim(key), key.arn, Verdict.RECLAIMED)


@pytest.mark.parametrize("state", [KEY_STATE_DISABLED, "Unavailable", "PendingImport"])
def test_not_enabled_left_alone(state: str) -> None:
    for active in ("true", "false"):
        key = peer(1, active=active, state=state)
        assert_kept(reclaim(key), key.arn, Verdict.NOT_ENABLED)


def test_interrupted_reclaim_completed_without_guard() -> None:
    key = peer(1, active="false")
    policy = ReclaimPolicy(max_reclaims_per_run=0, max_reclaim_fraction=0.0)
    plan = reclaim(key, policy=policy)
    assert plan.refusal is None
    assert kinds(plan, key.arn) == [ActionKind.SCHEDULE_DELETION]
    assert verdict_of(plan, key.arn) is Verdict.RECLAIMING


def test_many_interrupted_reclaims_do_not_trip_guard() -> None:
    keys = [peer(n, active="false") for n in range(20)]
    plan = reclaim(*keys, policy=ReclaimPolicy(max_reclaims_per_run=1))
    assert plan.refusal is None
    assert kinds(plan) == [ActionKind.SCHEDULE_DELETION] * 20


def test_inactive_but_refreshed_key_left_alone() -> None:
    key = peer(1, active="false", last_update=lu(NOW - DAY))
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.INACTIVE)
    assert anomalies(plan, key.arn) == {Anomaly.INACTIVE_NOT_STALE}


def test_restored_key_not_deleted_again() -> None:
    # CancelKeyDeletion leaves the key Disabled
    key = peer(1, active="false", state=KEY_STATE_DISABLED)
    assert_kept(reclaim(key), key.arn, Verdict.NOT_ENABLED)


@pytest.mark.parametrize("active", ["TRUE", "True", "", "yes", "1", "false ", None])
def test_malformed_active_kept(active: str | None) -> None:
    key = peer(1, active=active)
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.MALFORMED)
    assert anomalies(plan, key.arn) == {Anomaly.MALFORMED_ACTIVE}


@pytest.mark.parametrize("server", [None, ""])
def test_missing_server_id_kept(server: str | None) -> None:
    key = peer(1, server=server)
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.MALFORMED)
    assert anomalies(plan, key.arn) == {Anomaly.MISSING_SERVER_ID}


@pytest.mark.parametrize("key_id", [None, ""])
def test_missing_key_id_kept(key_id: str | None) -> None:
    key = peer(1, key_id=key_id)
    plan = reclaim(key)
    assert_kept(plan, key.arn, Verdict.MALFORMED)
    assert anomalies(plan, key.arn) == {Anomaly.MISSING_KEY_ID}


@pytest.mark.parametrize("td", [OTHER_TD, "other.org", "example_org", "Example.org", "", None])
def test_other_trust_domain_not_touched(td: str | None) -> None:
    key = peer(1, td=td)
    plan = reclaim(key)
    assert_kept(plan, key.arn)
    assert verdict_of(plan, key.arn) is not Verdict.STALE


def test_other_trust_domain_not_counted_by_blast_radius() -> None:
    # 2 of this TD's 2 active keys are stale: more than half, whatever other TDs hold
    ours = [peer(n) for n in range(2)]
    strangers = [peer(10 + n, td=OTHER_TD, last_update=STAMP) for n in range(10)]
    plan = reclaim(*ours, *strangers, policy=ReclaimPolicy(max_reclaim_fraction=0.5))
    assert plan.refusal is Refusal.BLAST_RADIUS
    assert plan.actions == ()


def test_other_trust_domain_key_never_serves_this_server() -> None:
    # a same-named server in another TD must not make our real serving key look superseded
    ours = make_key(1, created=NOW - 100 * DAY, last_update=ANCIENT)
    stranger = make_key(2, td=OTHER_TD, created=NOW - DAY, last_update=ANCIENT)
    plan = reclaim(ours, stranger)
    assert_kept(plan, ours.arn, Verdict.SERVING)
    assert_kept(plan, stranger.arn)


# --- B.2.4 clock guard --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aws_time",
    [
        None,
        NOW + TOLERANCE + timedelta(seconds=1),
        NOW - TOLERANCE - timedelta(seconds=1),
        NOW - timedelta(days=2),
    ],
)
def test_clock_guard_refuses(aws_time: datetime | None) -> None:
    keys = [peer(1), peer(2, active="false")]
    plan = reclaim(*keys, aws_time=aws_time)
    assert plan.refusal is Refusal.CLOCK_SKEW
    assert plan.refusal_detail
    assert plan.actions == ()
    assert len(plan.verdicts) == 2  # still reports what it saw


@pytest.mark.parametrize("skew", [timedelta(0), TOLERANCE, -TOLERANCE, timedelta(seconds=-3)])
def test_clock_within_tolerance_acts(skew: timedelta) -> None:
    plan = reclaim(peer(1), aws_time=NOW + skew)
    assert_reclaimed(plan, key_arn(1))


def test_check_clock() -> None:
    assert check_clock(NOW, NOW, TOLERANCE) is None
    assert check_clock(NOW + TOLERANCE, NOW, TOLERANCE) is None
    assert check_clock(NOW - TOLERANCE, NOW, TOLERANCE) is None
    assert check_clock(None, NOW, TOLERANCE) is not None
    assert check_clock(NOW + TOLERANCE + timedelta(microseconds=1), NOW, TOLERANCE) is not None
    assert check_clock(NOW - TOLERANCE - timedelta(microseconds=1), NOW, TOLERANCE) is not None
    assert check_clock(NOW, NOW, timedelta(0)) is None
    assert check_clock(NOW + timedelta(seconds=1), NOW, timedelta(0)) is not None


def test_clock_guard_applies_before_blast_radius() -> None:
    keys = [peer(n) for n in range(5)]
    plan = reclaim(*keys, policy=ReclaimPolicy(max_reclaims_per_run=1), aws_time=None)
    assert plan.refusal is Refusal.CLOCK_SKEW


# --- B.2.5 blast radius -------------------------------------------------------------------------


def fresh_peers(count: int, start: int = 100) -> list[ObservedKey]:
    return [peer(start + n, last_update=STAMP) for n in range(count)]


def test_more_than_max_reclaims_refused() -> None:
    stale = [peer(n) for n in range(11)]
    plan = reclaim(*stale, *fresh_peers(100), policy=ReclaimPolicy(max_reclaims_per_run=10))
    assert plan.refusal is Refusal.BLAST_RADIUS
    assert "max_reclaims_per_run" in plan.refusal_detail
    assert plan.actions == ()
    assert {verdict_of(plan, k.arn) for k in stale} == {Verdict.STALE}


def test_exactly_max_reclaims_allowed() -> None:
    stale = [peer(n) for n in range(10)]
    plan = reclaim(*stale, *fresh_peers(100), policy=ReclaimPolicy(max_reclaims_per_run=10))
    assert plan.refusal is None
    assert len(plan.actions) == 20


def test_more_than_fraction_refused() -> None:
    stale = [peer(n) for n in range(3)]
    plan = reclaim(*stale, *fresh_peers(2), policy=ReclaimPolicy(max_reclaim_fraction=0.5))
    assert plan.refusal is Refusal.BLAST_RADIUS
    assert "max_reclaim_fraction" in plan.refusal_detail
    assert plan.actions == ()


def test_exactly_fraction_allowed() -> None:
    stale = [peer(n) for n in range(2)]
    plan = reclaim(*stale, *fresh_peers(2), policy=ReclaimPolicy(max_reclaim_fraction=0.5))
    assert plan.refusal is None
    assert len(plan.actions) == 4


def test_fraction_limit_is_decimal_not_binary() -> None:
    # 0.57 * 100 is 56.99999999999999 in binary floating point; 57 of 100 is not more than 57 %
    stale = [peer(n) for n in range(57)]
    policy = ReclaimPolicy(max_reclaims_per_run=1000, max_reclaim_fraction=0.57)
    assert reclaim(*stale, *fresh_peers(43), policy=policy).refusal is None
    more = [peer(n) for n in range(58)]
    assert reclaim(*more, *fresh_peers(42), policy=policy).refusal is Refusal.BLAST_RADIUS


def test_fraction_counts_active_keys_whatever_their_state() -> None:
    stale = [peer(n) for n in range(2)]
    others = [
        peer(50, state=KEY_STATE_PENDING_DELETION),
        peer(51, state=KEY_STATE_DISABLED),
    ]
    inactive = [peer(60 + n, active="false", state=KEY_STATE_PENDING_DELETION) for n in range(10)]
    policy = ReclaimPolicy(max_reclaim_fraction=0.5)
    assert reclaim(*stale, *others, policy=policy).refusal is None  # 2 of 4
    assert reclaim(*stale, *others[:1], *inactive, policy=policy).refusal is Refusal.BLAST_RADIUS


def test_blast_radius_refusal_reclaims_nothing_new_but_completes() -> None:
    # Completing an interrupted reclaim was decided earlier: the guard neither counts nor stops it.
    keys = [peer(n) for n in range(3)] + [peer(10, active="false")]
    plan = reclaim(*keys, policy=ReclaimPolicy(max_reclaims_per_run=2))
    assert plan.refusal is Refusal.BLAST_RADIUS
    assert [(a.kind, a.arn) for a in plan.actions] == [(ActionKind.SCHEDULE_DELETION, keys[3].arn)]


def test_blast_radius_function() -> None:
    policy = ReclaimPolicy(max_reclaims_per_run=3, max_reclaim_fraction=0.5)
    assert blast_radius(0, 0, policy) is None
    assert blast_radius(0, 10, replace(policy, max_reclaims_per_run=0)) is None
    assert blast_radius(3, 6, policy) is None
    assert blast_radius(4, 100, policy) is not None
    assert blast_radius(3, 5, policy) is not None
    assert blast_radius(1, 0, policy) is not None
    assert blast_radius(1, 10, replace(policy, max_reclaim_fraction=0.0)) is not None


def test_completions_before_new_reclaims_and_mark_before_schedule() -> None:
    keys = [peer(1), peer(2, active="false"), peer(3)]
    plan = reclaim(*keys)
    order = [(a.kind, a.arn) for a in plan.actions]
    for key in (keys[0], keys[2]):
        mark = order.index((ActionKind.MARK_INACTIVE, key.arn))
        schedule = order.index((ActionKind.SCHEDULE_DELETION, key.arn))
        assert mark < schedule
    assert order.count((ActionKind.SCHEDULE_DELETION, keys[1].arn)) == 1
    assert (ActionKind.MARK_INACTIVE, keys[1].arn) not in order


# --- what the observer must fetch ---------------------------------------------------------------


def test_needs_state_only_for_keys_stale_by_their_tags() -> None:
    policy = ReclaimPolicy()
    assert needs_state(peer(1), TD, NOW, policy)
    assert needs_state(peer(1, last_update=None), TD, NOW, policy)
    assert needs_state(peer(1, active="false"), TD, NOW, policy)
    assert needs_state(make_key(1, last_update=ANCIENT), TD, NOW, policy)
    assert not needs_state(peer(1, last_update=STAMP), TD, NOW, policy)
    assert not needs_state(peer(1, last_update="1.5"), TD, NOW, policy)
    assert not needs_state(peer(1, last_update=str(2**62)), TD, NOW, policy)
    assert not needs_state(peer(1, extra={"spire-protect": "true"}), TD, NOW, policy)
    assert not needs_state(peer(1, active="TRUE"), TD, NOW, policy)
    assert not needs_state(peer(1, td=OTHER_TD), TD, NOW, policy)
    assert not needs_state(peer(1, server=None), TD, NOW, policy)


def test_needs_aliases_only_for_enabled_old_keys() -> None:
    policy = ReclaimPolicy()
    assert needs_aliases(make_meta(1), NOW, policy)
    assert needs_aliases(make_meta(1, created=CUTOFF), NOW, policy)
    assert not needs_aliases(make_meta(1, created=CUTOFF + timedelta(seconds=1)), NOW, policy)
    assert not needs_aliases(make_meta(1, created=None), NOW, policy)
    assert not needs_aliases(make_meta(1, state=KEY_STATE_DISABLED), NOW, policy)
    assert not needs_aliases(make_meta(1, state=KEY_STATE_PENDING_DELETION), NOW, policy)


# --- choose_serving -----------------------------------------------------------------------------


def test_choose_serving_rules() -> None:
    old = make_key(1, created=NOW - 90 * DAY)
    new = make_key(2, created=NOW - DAY)
    undated = make_key(3, created=None)
    disabled = make_key(4, created=NOW, state=KEY_STATE_DISABLED)
    undescribed = make_key(5, described=False)
    assert choose_serving([old, new, undated, disabled, undescribed], None) == (new, None)
    assert choose_serving([undated], None) == (undated, None)
    assert choose_serving([disabled, undescribed], None) == (None, None)
    assert choose_serving([], None) == (None, None)
    alias_old = make_alias_target("x509-CA-A", old.meta)
    assert choose_serving([old, new], alias_old) == (old, None)
    legacy = make_meta(9)
    assert choose_serving([old, new], make_alias_target("x509-CA-A", legacy)) == (None, legacy)
    alias_disabled = make_alias_target("x509-CA-A", disabled.meta)
    assert choose_serving([old, new, disabled], alias_disabled) == (new, None)
    assert choose_serving([old, new], make_alias_target("x509-CA-A", None)) == (new, None)


def test_choose_serving_tie_breaks_deterministically() -> None:
    a = make_key(1, created=NOW - DAY)
    b = make_key(2, created=NOW - DAY)
    assert choose_serving([a, b], None) == choose_serving([b, a], None)


# --- properties ---------------------------------------------------------------------------------


def _apply_and_replan(world: ReclaimWorld) -> tuple[Plan, Plan]:
    first = plan_reclaim(world.observed, world.now, world.policy)
    after = replace(world, truth=apply_reclaim(world.truth, first))
    second = plan_reclaim(after.observed, world.now, world.policy)
    return first, second


@property_settings
@given(reclaim_worlds())
def test_reclaim_is_idempotent(world: ReclaimWorld) -> None:
    first, second = _apply_and_replan(world)
    assert second.actions == (), (first.actions, second.verdicts)
    if first.refusal is not None:
        assert second.refusal == first.refusal


@property_settings
@given(reclaim_worlds())
def test_serving_keys_never_reclaimed(world: ReclaimWorld) -> None:
    plan = plan_reclaim(world.observed, world.now, world.policy)
    serving = serving_arns(world.truth)
    assert not serving & {a.arn for a in plan.actions}


@property_settings
@given(reclaim_worlds())
def test_actions_only_on_stale_keys_of_this_trust_domain(world: ReclaimWorld) -> None:
    observed = world.observed
    plan = plan_reclaim(observed, world.now, world.policy)
    verdicts = {v.arn: v.verdict for v in plan.verdicts}
    keys = {k.arn: k for k in observed.keys}
    assert len(verdicts) == len(keys)
    for action in plan.actions:
        key = keys[action.arn]
        assert verdicts[action.arn] in (Verdict.STALE, Verdict.RECLAIMING)
        assert key.tags.get(spire.TAG_TRUST_DOMAIN) == TD
        assert key.meta is not None
        assert key.meta.state == KEY_STATE_ENABLED
        assert action.key_id == key.meta.key_id
        assert key.tags.get(world.policy.protect_tag, "").strip().lower() != "true"
        parsed = spire.parse_last_update(key.tags.get(spire.TAG_LAST_UPDATE))
        if spire.TAG_LAST_UPDATE in key.tags:
            assert parsed is not None
            assert parsed <= (world.now - world.policy.stale_after).timestamp()
        assert key.meta.creation_date is not None
        assert key.meta.creation_date <= world.now - world.policy.stale_after
    if plan.actions:
        assert plan.refusal is not Refusal.CLOCK_SKEW
        assert check_clock(observed.aws_time, world.now, world.policy.clock_skew_tolerance) is None
        newly = [a for a in plan.actions if a.kind is ActionKind.MARK_INACTIVE]
        assert len(newly) <= world.policy.max_reclaims_per_run
    if plan.refusal is Refusal.BLAST_RADIUS:  # only completions of interrupted reclaims go on
        assert {verdicts[a.arn] for a in plan.actions} <= {Verdict.RECLAIMING}
    for arn in {a.arn for a in plan.actions}:
        expected = (
            [ActionKind.SCHEDULE_DELETION]
            if verdicts[arn] is Verdict.RECLAIMING
            else [ActionKind.MARK_INACTIVE, ActionKind.SCHEDULE_DELETION]
        )
        assert kinds(plan, arn) == expected


@property_settings
@given(refresh_worlds())
def test_refresh_is_idempotent(world: RefreshWorld) -> None:
    first = plan_refresh(world.snapshot, world.now, world.policy)
    after = apply_refresh(world.snapshot, first)
    second = plan_refresh(after, world.now, world.policy)
    assert actions_of(second, ActionKind.MIGRATE) == [], first.actions
    assert actions_of(second, ActionKind.STAMP) == [], first.actions
    # no alias refresh appears that the first run did not decide: nothing was repointed
    assert {(a.arn, a.alias_name) for a in actions_of(second, ActionKind.REFRESH_ALIAS)} <= {
        (a.arn, a.alias_name) for a in actions_of(first, ActionKind.REFRESH_ALIAS)
    }


@property_settings
@given(refresh_worlds())
def test_refresh_acts_only_on_serving_keys_and_never_reverts_aliases(world: RefreshWorld) -> None:
    plan = plan_refresh(world.snapshot, world.now, world.policy)
    serving = serving_arns(world.snapshot)
    targets = {a.alias_name: a.target for a in world.snapshot.aliases}
    stamp = str(int(world.now.timestamp()))
    tagged = {k.arn: k for k in world.snapshot.tagged}
    for action in plan.actions:
        assert action.arn in serving
        assert action.kind in (ActionKind.STAMP, ActionKind.MIGRATE, ActionKind.REFRESH_ALIAS)
        if action.kind is ActionKind.REFRESH_ALIAS:
            target = targets[action.alias_name]
            assert target is not None
            assert target.enabled
            assert action.arn == target.arn
            assert world.policy.refresh_aliases
        else:
            assert action.alias_name is None
            assert action.tags[spire.TAG_LAST_UPDATE] == stamp
        if action.kind is ActionKind.STAMP:
            assert dict(action.tags) == {spire.TAG_LAST_UPDATE: stamp}
            key = tagged[action.arn]
            assert key.meta is not None
            assert key.meta.enabled
        if action.kind is ActionKind.MIGRATE:
            assert world.policy.migrate_legacy_aliases
            assert set(action.tags) == set(spire.SPIRE_TAGS)
            assert action.tags[spire.TAG_SERVER_ID] == OWN
            assert action.tags[spire.TAG_TRUST_DOMAIN] == TD
            assert action.arn not in tagged or not tagged[action.arn].tags.get(spire.TAG_KEY_ID)
    stamped = [a.arn for a in actions_of(plan, ActionKind.STAMP)]
    assert len(stamped) == len(set(stamped))


@property_settings
@given(reclaim_worlds(), refresh_worlds())
def test_planner_deterministic_and_total(reclaim_world: ReclaimWorld, world: RefreshWorld) -> None:
    observed = reclaim_world.observed
    one = plan_reclaim(observed, reclaim_world.now, reclaim_world.policy)
    two = plan_reclaim(observed, reclaim_world.now, reclaim_world.policy)
    assert one == two
    reordered = replace(observed, keys=observed.keys[::-1])
    three = plan_reclaim(reordered, reclaim_world.now, reclaim_world.policy)
    assert {(a.kind, a.arn) for a in three.actions} == {(a.kind, a.arn) for a in one.actions}
    assert three.refusal == one.refusal
    assert plan_refresh(world.snapshot, world.now, world.policy) == plan_refresh(
        world.snapshot, world.now, world.policy
    )


# --- purity -------------------------------------------------------------------------------------

FORBIDDEN = ("aioboto3", "botocore", "boto3", "aiobotocore", "structlog", "prometheus_client")


def test_plan_module_imports_no_io_library() -> None:
    source = Path(planner.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & set(FORBIDDEN)


def test_importing_plan_loads_no_io_library() -> None:
    code = (
        f"import sys, daemon.plan\nprint(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(planner.__file__).parent.parent,
    )
    assert result.stdout.strip() == ""


def test_planner_does_not_mutate_its_input() -> None:
    key = peer(1)
    tags_before = dict(key.tags)
    snapshot = ReclaimSnapshot(TD, OWN, (key,), (), NOW)
    plan_reclaim(snapshot, NOW, ReclaimPolicy())
    assert dict(key.tags) == tags_before
    meta_before = KeyMeta(key.arn, "k", KEY_STATE_ENABLED)
    refresh(make_key(2, last_update=ANCIENT), aliases=(make_alias_target(ACME, meta_before),))
    assert meta_before.state == KEY_STATE_ENABLED
