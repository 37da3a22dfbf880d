"""The reclaim planner (contract §6): every rule of stale and never stale, then properties."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given

from daemon import plan as planner
from daemon import spire
from daemon.model import (
    KEY_STATE_DISABLED,
    KEY_STATE_ENABLED,
    KEY_STATE_PENDING_DELETION,
    ActionKind,
    AliasMeta,
    Anomaly,
    Job,
    KeyMeta,
    ObservedKey,
    Plan,
    ReclaimSnapshot,
    Refusal,
    Verdict,
)
from daemon.plan import (
    ReclaimPolicy,
    check_clock,
    needs_aliases,
    needs_state,
    not_spire_shaped,
    plan_reclaim,
    plan_refresh,
)
from daemon.plan.guards import spent
from tests.plans import (
    ACME,
    ANCIENT,
    CUTOFF,
    LOOSE,
    STAMP,
    anomalies,
    assert_kept,
    assert_reclaimed,
    kinds,
    peer,
    reclaim,
    refresh,
    verdict_of,
)
from tests.strategies import (
    DAY,
    NOW,
    OTHER_TD,
    OWN,
    PEER,
    STALE_AFTER,
    TOLERANCE,
    ReclaimWorld,
    RefreshWorld,
    apply_reclaim,
    key_arn,
    lu,
    make_alias_target,
    make_key,
    make_meta,
    property_settings,
    reclaim_worlds,
    refresh_worlds,
    serving_arns,
    spire_alias,
    unix,
)
from tests.world import TD

# --- reclaim: staleness (contract §6.2) ----------------------------------------------------------


def test_stale_peer_key_marked_then_scheduled() -> None:
    key = peer(1)
    plan = reclaim(key)
    assert plan.job is Job.RECLAIM
    assert_reclaimed(plan, key.arn)
    mark, schedule = plan.actions
    assert dict(mark.tags) == {"spire-active": "false", spire.TAG_MARKED_AT: str(unix(NOW))}
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


def test_our_alias_on_another_servers_key_does_not_make_it_ours() -> None:
    """An alias under this server's prefix on a dead peer's key: the key is not this server's
    serving key, and once the alias is stale too (nobody refreshes it) the key is reclaimed."""
    target = peer(1, last_update=ANCIENT)
    ours = make_alias_target("x509-CA-A", target.meta)
    assert_reclaimed(reclaim(target, own_aliases=(ours,)), target.arn)
    # While something still refreshes that alias (this server's SPIRE in alias mode), it stays.
    used = replace(target, aliases=(AliasMeta(ours.alias_name, None, NOW - DAY),))
    assert_kept(reclaim(used, own_aliases=(ours,)), target.arn, Verdict.ALIAS_FRESH)
    # An untagged target, or one tagged for this server, still serves.
    mine = make_key(2, last_update=ANCIENT)
    plan = reclaim(mine, own_aliases=(make_alias_target("x509-CA-A", mine.meta),))
    assert_kept(plan, mine.arn, Verdict.SERVING)


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


def interrupted(n: int) -> ObservedKey:
    """A stale key the daemon marked spire-active=false an hour ago, then did not schedule."""
    mark = {spire.TAG_MARKED_AT: str(unix(NOW - timedelta(hours=1)))}
    return peer(n, active="false", extra=mark)


def test_interrupted_reclaim_is_completed() -> None:
    key = interrupted(1)
    plan = reclaim(key)
    assert plan.refusal is None
    assert kinds(plan, key.arn) == [ActionKind.SCHEDULE_DELETION]
    assert verdict_of(plan, key.arn) is Verdict.RECLAIMING


def test_interrupted_reclaims_count_against_the_budget() -> None:
    """They used to bypass every guard: marks made by a third party, or restored keys, were all
    scheduled in one run."""
    keys = [interrupted(n) for n in range(20)]
    plan = reclaim(*keys, policy=ReclaimPolicy(max_reclaims=3, max_reclaim_fraction=1.0))
    assert plan.refusal is Refusal.BUDGET
    assert kinds(plan) == [ActionKind.SCHEDULE_DELETION] * 3


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


# --- properties ---------------------------------------------------------------------------------


def _apply_and_replan(world: ReclaimWorld) -> tuple[Plan, Plan]:
    first = plan_reclaim(world.observed, world.policy)
    after = replace(world, truth=apply_reclaim(world.truth, first))
    second = plan_reclaim(after.observed, world.policy)
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
    plan = plan_reclaim(world.observed, world.policy)
    serving = serving_arns(world.truth)
    assert not serving & {a.arn for a in plan.actions}


@property_settings
@given(reclaim_worlds())
def test_actions_only_on_stale_keys_of_this_trust_domain(world: ReclaimWorld) -> None:
    observed = world.observed
    plan = plan_reclaim(observed, world.policy)
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
        assert not_spire_shaped(key.meta) is None  # only keys SPIRE could have made
        if verdicts[action.arn] is Verdict.RECLAIMING:  # the daemon's own, recent mark
            mark = spire.parse_last_update(key.tags.get(spire.TAG_MARKED_AT))
            assert mark is not None
            assert mark > (world.now - world.policy.mark_window).timestamp()
    if plan.actions:
        assert plan.refusal in (None, Refusal.BUDGET)
        assert observed.aws_time is not None
        assert (
            check_clock(observed.aws_time, observed.local_time, world.policy.clock_skew_tolerance)
            is None
        )
        scheduled = [a for a in plan.actions if a.kind is ActionKind.SCHEDULE_DELETION]
        already = spent(observed, world.now, world.policy)
        assert len(scheduled) + len(already) <= max(world.policy.max_reclaims, len(already))
    if plan.refusal in (Refusal.BLAST_RADIUS, Refusal.CLOCK_SKEW):
        assert plan.actions == ()
    for arn in {a.arn for a in plan.actions}:
        expected = (
            [ActionKind.SCHEDULE_DELETION]
            if verdicts[arn] is Verdict.RECLAIMING
            else [ActionKind.MARK_INACTIVE, ActionKind.SCHEDULE_DELETION]
        )
        assert kinds(plan, arn) == expected


@property_settings
@given(reclaim_worlds(), refresh_worlds())
def test_planner_deterministic_and_total(reclaim_world: ReclaimWorld, world: RefreshWorld) -> None:
    observed = reclaim_world.observed
    one = plan_reclaim(observed, reclaim_world.policy)
    two = plan_reclaim(observed, reclaim_world.policy)
    assert one == two
    reordered = replace(observed, keys=observed.keys[::-1])
    three = plan_reclaim(reordered, reclaim_world.policy)
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
    snapshot = ReclaimSnapshot(TD, OWN, (key,), (), NOW, NOW)
    plan_reclaim(snapshot, ReclaimPolicy())
    assert dict(key.tags) == tags_before
    meta_before = KeyMeta(key.arn, "k", KEY_STATE_ENABLED)
    refresh(make_key(2, last_update=ANCIENT), aliases=(make_alias_target(ACME, meta_before),))
    assert meta_before.state == KEY_STATE_ENABLED
