"""The refresh planner (contract §4, §5): liveness, serving keys, migration, stamps, aliases."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given

from daemon import spire
from daemon.model import (
    KEY_STATE_DISABLED,
    KEY_STATE_PENDING_DELETION,
    Action,
    ActionKind,
    Anomaly,
    Job,
    Liveness,
    ObservedKey,
    Plan,
    ProbeFailure,
    RefreshSnapshot,
    Refusal,
    Verdict,
)
from daemon.plan import (
    RefreshPolicy,
    choose_serving,
    key_id_from_arn,
    plan_refresh,
)
from tests.plans import (
    ACME,
    ANCIENT,
    STAMP,
    actions_of,
    anomalies,
    kinds,
    refresh,
    verdict_of,
)
from tests.strategies import (
    ALIVE,
    DAY,
    NOW,
    OWN,
    RefreshWorld,
    apply_refresh,
    key_arn,
    lu,
    make_alias_target,
    make_key,
    make_meta,
    property_settings,
    refresh_worlds,
    serving_arns,
    unix,
)
from tests.world import TD

# --- helpers and small functions ----------------------------------------------------------------


def test_key_id_from_arn() -> None:
    assert key_id_from_arn(key_arn(7)) == "00000007-0000-4000-8000-000000000007"
    assert key_id_from_arn("1234abcd-12ab-34cd-56ef-1234567890ab") == (
        "1234abcd-12ab-34cd-56ef-1234567890ab"
    )


def test_stamp_is_truncated_unix_seconds() -> None:
    assert NOW.microsecond != 0
    assert STAMP == str(unix(NOW)) == "1767268800"


# --- a keep-alive means alive (contract §4) ------------------------------------------------------


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
    assert "AWS was not read" in plan.refusal_detail


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


# --- refresh (contract §5) -----------------------------------------------------------------------


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
def test_our_alias_on_another_owners_key_is_neither_migrated_nor_refreshed(
    tag: str, value: str
) -> None:
    """An alias under this server's prefix that points to a dead peer's key: refreshing it would
    keep that key alias-fresh (never reclaimed) for as long as this daemon runs."""
    theirs = make_meta(9, created=NOW - 400 * DAY)
    alias = replace(make_alias_target(ACME, theirs), target_tags={tag: value})
    plan = refresh(aliases=(alias,))
    assert plan.actions == ()
    assert anomalies(plan, theirs.arn) == {Anomaly.ALIAS_POINTS_ELSEWHERE}
    assert f"{tag}={value!r}" in plan.findings[0].detail


def test_a_non_spire_key_behind_our_alias_is_not_kept_alive() -> None:
    data_key = make_meta(9, key_usage="ENCRYPT_DECRYPT", key_spec="SYMMETRIC_DEFAULT")
    tagged = make_key(
        3, key_id="x509-CA-B", last_update=ANCIENT, meta_fields={"multi_region": True}
    )
    plan = refresh(tagged, aliases=(make_alias_target(ACME, data_key),))
    assert plan.actions == ()
    assert anomalies(plan) == {Anomaly.NOT_SPIRE_KEY}
    assert {v.verdict for v in plan.verdicts} == {Verdict.NOT_SPIRE}


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
    assert Anomaly.ALIAS_TO_DISABLED_KEY in anomalies(plan, target.arn)
    assert verdict_of(plan, older.arn) is Verdict.SERVING


def test_disabled_legacy_alias_target_not_migrated() -> None:
    legacy = make_meta(9, state=KEY_STATE_DISABLED)
    plan = refresh(aliases=(make_alias_target(ACME, legacy),))
    assert plan.actions == ()
    assert Anomaly.ALIAS_TO_DISABLED_KEY in anomalies(plan, legacy.arn)
    (finding,) = [f for f in plan.findings if f.arn == legacy.arn]
    assert "found disabled SPIRE key" in finding.detail


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
            assert action.alias_name is not None
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
