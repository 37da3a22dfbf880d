"""The failure matrix (issue 5): the daemon against an AWS-faithful emulator, with faults.

Two parts:

* the harness itself: the fault proxy makes moto behave like AWS where it matters (key-state
  rules, key ARNs, alias dates, ListAliases paging) and injects faults (throttling at a seeded rate
  or in bursts, AccessDenied per operation or per key, HTTP 500, connection resets, latency,
  ``FailedResourcesMap`` entries, a hook that runs after the k-th call took effect);
* the matrix: each scenario of :mod:`devtools.scenarios` (the same functions ``make reliability``
  tabulates) runs the real CLI through the proxy and judges the FINAL AWS STATE read back from the
  emulator: every key ends as expected, no key is left ``spire-active=false`` but Enabled, none is
  scheduled for deletion twice, and no key that must be kept got a mutating call it must never
  get.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import spire
from devtools import reliability, scenarios
from devtools.emulator import REGION, Emulator
from devtools.faultproxy import MUTATING, FaultProxy, key_id_of
from devtools.scenarios import Harness, KeySpec, ScenarioOutcome
from devtools.spire_health import SpireHealth

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy_server(emulator: Emulator) -> Iterator[FaultProxy]:
    """This module's proxy answers as AWS does where the emulator does not (aws=True); the
    conftest's ``proxy`` resets it before each test."""
    with FaultProxy(emulator.endpoint_url, emulator=emulator, aws=True) as proxy:
        yield proxy


@pytest.fixture
def h(proxy: FaultProxy, aws: Emulator, tmp_path: Path, spire_health: SpireHealth) -> Harness:
    harness = Harness(aws, proxy, tmp_path, spire_health)
    harness.fresh()
    return harness


@pytest.fixture
def fast_backoff() -> Iterator[None]:
    with scenarios.fast_backoff():
        yield


def holds(outcome: ScenarioOutcome) -> None:
    """The scenario converged and wrongly touched no key."""
    assert outcome.ok, outcome.explain()


def state(h: Harness, outcome: ScenarioOutcome, name: str) -> tuple[str, str | None]:
    assert outcome.world is not None
    arn = outcome.world.arn(name)
    return h.emulator.key_state(arn), h.emulator.tags(arn).get(spire.TAG_ACTIVE)


# ------------------------------------------------------------------ the harness


def client(service: str, proxy: FaultProxy, attempts: int = 1) -> Any:
    """A plain boto3 client of ``service`` through the proxy, with ``attempts`` in all."""
    return boto3.client(
        service,
        endpoint_url=proxy.endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}),
    )


def kms(proxy: FaultProxy, attempts: int = 1) -> Any:
    return client("kms", proxy, attempts)


def tagging(proxy: FaultProxy, attempts: int = 1) -> Any:
    return client("resourcegroupstaggingapi", proxy, attempts)


def describe_outcome(client: Any, key_id: str) -> str:
    """One DescribeKey: "ok", or the error code it got."""
    try:
        client.describe_key(KeyId=key_id)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "ok"


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_proxy_enforces_kms_key_state_rules(aws: Emulator, proxy: FaultProxy) -> None:
    proxy.emulate_aws()
    arn = aws.create_key()
    client = kms(proxy)

    client.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)  # an ARN: moto alone 500s

    calls: tuple[Callable[[], object], ...] = (
        lambda: client.schedule_key_deletion(KeyId=key_id_of(arn), PendingWindowInDays=7),
        lambda: client.tag_resource(KeyId=arn, Tags=[{"TagKey": "a", "TagValue": "b"}]),
        lambda: client.untag_resource(KeyId=arn, TagKeys=["a"]),
    )
    for call in calls:
        with pytest.raises(ClientError) as refused:
            call()
        assert code_of(refused) == "KMSInvalidStateException"
        assert "pending deletion" in str(refused.value)
    client.cancel_key_deletion(KeyId=arn)
    with pytest.raises(ClientError) as twice:
        client.cancel_key_deletion(KeyId=arn)
    assert code_of(twice) == "KMSInvalidStateException"
    with pytest.raises(ClientError) as window:
        client.schedule_key_deletion(KeyId=arn, PendingWindowInDays=3)
    assert code_of(window) == "ValidationException"
    assert [e.ok for e in proxy.exchanges("ScheduleKeyDeletion")] == [True, False, False]
    assert len(proxy.successes("ScheduleKeyDeletion")) == 1
    assert aws.key_state(arn) == "Disabled"


def test_moto_semantics_come_back_when_aws_behaviours_are_off(
    aws: Emulator, proxy: FaultProxy
) -> None:
    proxy.emulate_moto()
    key_id = key_id_of(aws.create_key())
    client = kms(proxy)
    client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)  # moto accepts it
    assert len(proxy.successes("ScheduleKeyDeletion")) == 2
    proxy.reset()
    assert proxy.behaviours == frozenset(
        {"key_states", "key_arns", "alias_dates", "alias_paging", "validation", "signing_time"}
    )


def test_tag_resources_fails_pending_keys_per_arn(aws: Emulator, proxy: FaultProxy) -> None:
    proxy.emulate_aws()
    pending, live = aws.create_key(), aws.create_key()
    aws.backend.schedule_key_deletion(key_id_of(pending), 7)
    proxy.fail_resources([live], times=1)  # and a throttled ARN, as AWS reports one

    answer = tagging(proxy).tag_resources(ResourceARNList=[pending, live], Tags={"x": "1"})

    failed = answer["FailedResourcesMap"]
    assert set(failed) == {pending, live}
    assert failed[pending]["ErrorCode"] == "InvalidParameterException"
    assert "pending deletion" in failed[pending]["ErrorMessage"]
    assert failed[live]["StatusCode"] == 429
    assert "x" not in aws.tags(pending)
    answer = tagging(proxy).tag_resources(ResourceARNList=[pending, live], Tags={"x": "1"})
    assert set(answer["FailedResourcesMap"]) == {pending}
    assert aws.tags(live)["x"] == "1"


def test_alias_dates_tracked_set_and_paged(aws: Emulator, proxy: FaultProxy) -> None:
    proxy.emulate_aws()
    client = kms(proxy)
    arn = aws.create_key()
    aws.foreign_keys(25, aliases_every=1)
    client.create_alias(AliasName="alias/mine", TargetKeyId=key_id_of(arn))
    created = proxy.alias_date("alias/mine")
    assert created is not None and abs(created - time.time()) < 5
    old = datetime.now(UTC) - timedelta(days=20)
    proxy.set_alias_date("alias/mine", old)

    pages, marker = [], None
    while True:
        params: dict[str, Any] = {"Limit": 10}
        if marker:
            params["Marker"] = marker
        page = client.list_aliases(**params)
        pages.append(page["Aliases"])
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    names = [a["AliasName"] for p in pages for a in p]
    assert [len(p) for p in pages] == [10, 10, 10, 10]  # 26 aliases + 14 reserved by moto
    assert len(names) == len(set(names)) == 40
    assert names == sorted(names)
    mine = next(a for p in pages for a in p if a["AliasName"] == "alias/mine")
    assert abs(mine["LastUpdatedDate"].timestamp() - old.timestamp()) < 1
    team = next(a for p in pages for a in p if a["AliasName"] == "alias/team-0")
    assert abs(team["LastUpdatedDate"].timestamp() - time.time()) < 60  # dated when first listed

    client.update_alias(AliasName="alias/mine", TargetKeyId=key_id_of(arn))
    [bumped] = client.list_aliases(KeyId=key_id_of(arn))["Aliases"]
    assert abs(bumped["LastUpdatedDate"].timestamp() - time.time()) < 5
    # Backdating the last update backdated the creation too (never after the last update).
    assert abs(bumped["CreationDate"].timestamp() - old.timestamp()) < 1
    for limit in (101, 1000):  # botocore itself refuses 0
        with pytest.raises(ClientError) as invalid:
            client.list_aliases(Limit=limit)
        assert code_of(invalid) == "ValidationException"


def test_alias_dates_follow_the_clock_skew(aws: Emulator, proxy: FaultProxy) -> None:
    proxy.emulate_aws()
    proxy.emulate_moto("signing_time")  # a client 15 days off would be refused, not dated
    aws.clock_skew = timedelta(days=15)
    key_id = key_id_of(aws.create_key())
    client = kms(proxy)
    client.create_alias(AliasName="alias/skewed", TargetKeyId=key_id)
    [alias] = client.list_aliases(KeyId=key_id)["Aliases"]
    assert abs(alias["LastUpdatedDate"].timestamp() - (time.time() + 15 * 86400)) < 60


def test_requests_signed_more_than_five_minutes_off_are_refused(
    aws: Emulator, proxy: FaultProxy
) -> None:
    proxy.emulate_aws("signing_time")
    key_id = key_id_of(aws.create_key())
    client = kms(proxy)
    client.describe_key(KeyId=key_id)  # signed now: fine
    aws.clock_skew = timedelta(minutes=4)
    client.describe_key(KeyId=key_id)  # 4 minutes off: still fine
    for skew, words in (
        (timedelta(minutes=6), "Signature expired"),
        (timedelta(minutes=-6), "not yet current"),
    ):
        aws.clock_skew = skew
        with pytest.raises(ClientError) as refused:
            client.describe_key(KeyId=key_id)
        error = refused.value.response["Error"]
        assert error["Code"] == "InvalidSignatureException"
        assert words in error["Message"]
    assert not proxy.exchanges("DescribeKey")[-1].forwarded


def test_date_header_shifted_or_dropped_and_a_stale_index(aws: Emulator, proxy: FaultProxy) -> None:
    arn = aws.spire_key("example.org", "s", "x509-CA-A", last_update=5, alias=False)
    client, tags = kms(proxy), tagging(proxy)
    proxy.date_offset(3600)
    seen = client.describe_key(KeyId=arn)["ResponseMetadata"]["HTTPHeaders"]["date"]
    assert abs(parsedate_to_datetime(seen).timestamp() - (time.time() + 3600)) < 5
    proxy.drop_date()
    headers = client.describe_key(KeyId=arn)["ResponseMetadata"]["HTTPHeaders"]
    assert not headers.get("date")
    proxy.date_offset(0)
    proxy.stale_index({arn: {"spire-last-update": "1", "spire-server-td": "example.org"}})
    listed = tags.get_resources(ResourceTypeFilters=["kms:key"])["ResourceTagMappingList"]
    (item,) = [i for i in listed if i["ResourceARN"] == arn]
    assert {t["Key"]: t["Value"] for t in item["Tags"]}["spire-last-update"] == "1"
    real = client.list_resource_tags(KeyId=arn)["Tags"]
    assert {t["TagKey"]: t["TagValue"] for t in real}["spire-last-update"] == "5"


def test_throttling_at_a_seeded_rate_and_in_bursts(aws: Emulator, proxy: FaultProxy) -> None:
    key_id = key_id_of(aws.create_key())
    client, tags = kms(proxy), tagging(proxy)
    proxy.throttle_rate(0.5, seed=4)
    outcomes = [describe_outcome(client, key_id) for _ in range(40)]
    assert set(outcomes) == {"ok", "ThrottlingException"}
    assert 10 <= outcomes.count("ok") <= 30
    with pytest.raises(ClientError) as tagging_throttled:
        for _ in range(10):
            tags.get_resources(ResourceTypeFilters=["kms:key"])
    assert code_of(tagging_throttled) == "ThrottledException"  # the tagging API's spelling

    proxy.reset()
    proxy.throttle_bursts(2, every=5)
    seen = ["." if describe_outcome(client, key_id) == "ok" else "T" for _ in range(10)]
    assert "".join(seen) == "TT...TT..."


def test_server_errors_resets_and_latency_are_retried(
    aws: Emulator, proxy: FaultProxy, fast_backoff: None
) -> None:
    key_id = key_id_of(aws.create_key())
    client = kms(proxy, attempts=3)
    proxy.server_error("DescribeKey", times=1)
    proxy.reset_connection("DescribeKey", times=1)
    proxy.delay("DescribeKey", 0.3, times=1)
    started = time.monotonic()
    assert client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyId"] == key_id
    assert time.monotonic() - started >= 0.3
    answers = [(e.status, e.error, e.answered_by) for e in proxy.exchanges("DescribeKey")]
    assert answers == [
        (500, "InternalFailure", "proxy"),
        (None, None, ""),
        (200, None, "emulator"),
    ]


def test_a_lost_answer_leaves_the_change_made(aws: Emulator, proxy: FaultProxy) -> None:
    proxy.emulate_aws()
    key_id = key_id_of(aws.create_key())
    proxy.reset_connection("ScheduleKeyDeletion", times=1, after_forward=True)
    with pytest.raises(ClientError) as retried:
        kms(proxy, attempts=2).schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert code_of(retried) == "KMSInvalidStateException"  # the retry meets AWS's rule
    assert aws.key_state(key_id) == "PendingDeletion"
    assert [e.effective for e in proxy.exchanges("ScheduleKeyDeletion")] == [True, False]


def test_access_denied_per_operation_and_per_key(aws: Emulator, proxy: FaultProxy) -> None:
    denied, allowed = aws.create_key(), aws.create_key()
    proxy.deny("ScheduleKeyDeletion", keys=[denied])
    client = kms(proxy)
    with pytest.raises(ClientError) as refused:
        client.schedule_key_deletion(KeyId=key_id_of(denied), PendingWindowInDays=7)
    assert code_of(refused) == "AccessDeniedException"
    assert "kms:ScheduleKeyDeletion" in str(refused.value)
    client.schedule_key_deletion(KeyId=key_id_of(allowed), PendingWindowInDays=7)
    assert aws.key_state(allowed) == "PendingDeletion"


def test_after_hook_runs_once_the_change_is_made_before_the_answer(
    aws: Emulator, proxy: FaultProxy
) -> None:
    keys = [key_id_of(aws.create_key()) for _ in range(3)]
    answered: list[str] = []  # the calls the client got an answer to, in order
    seen: list[tuple[str, str, int]] = []
    proxy.after(
        MUTATING,
        lambda body: seen.append((body["KeyId"], aws.tags(body["KeyId"])["n"], len(answered))),
        nth=2,
    )
    client = kms(proxy)
    for n, key_id in enumerate(keys):
        client.tag_resource(KeyId=key_id, Tags=[{"TagKey": "n", "TagValue": str(n)}])
        answered.append(key_id)
    # The 2nd call only: its tag already applied, while the client had heard back from 1 call.
    assert seen == [(keys[1], "1", 1)]


def test_kill_after_sigkills_the_process_before_it_hears_back(
    aws: Emulator, proxy: FaultProxy, tmp_path: Path, spire_health: SpireHealth
) -> None:
    h = Harness(aws, proxy, tmp_path, spire_health)
    h.fresh()
    world = scenarios.seed_fleet(h)
    box: dict[str, int] = {}
    proxy.kill_after("TagResource", 1, lambda: box.get("pid"))
    process = h.spawn("once")
    box["pid"] = process.pid
    run = h.finish(process)
    assert run.killed, run.out + run.err
    legacy = world.arn("own ACME key (legacy, alias only)")
    assert aws.tags(legacy)[spire.TAG_ACTIVE] == "true"  # the migration happened
    assert "migrate" not in run.out  # and the process never printed a result


# ------------------------------------------------------------------ the matrix


def test_fault_free_fleet_run_converges(h: Harness) -> None:
    outcome, _, requests = scenarios.fault_free(h)
    holds(outcome)
    assert {e.operation for e in h.proxy.exchanges(MUTATING)} == {
        "TagResource",  # the migration
        "TagResources",  # stamps (and marks, batched)
        "UpdateAlias",
        "ScheduleKeyDeletion",
    }
    assert requests < 60


@pytest.mark.parametrize("seed", [4, 6, 9])
def test_throttling_on_half_of_all_calls_converges_to_the_fault_free_state(
    h: Harness, fast_backoff: None, seed: int
) -> None:
    outcome = scenarios.throttling(h, rate=0.5, seed=seed)
    holds(outcome)  # the fault-free end state, within scenarios.throttling's max_runs
    assert state(h, outcome, "dead peer x509-CA-A (20 days stale)") == ("PendingDeletion", "false")
    assert state(h, outcome, "live peer x509-CA-A") == ("Enabled", "true")


def test_throttling_in_bursts_converges(h: Harness, fast_backoff: None) -> None:
    holds(scenarios.throttling(h, bursts=True))


def test_answers_lost_after_the_change_converge_without_double_deletion(
    h: Harness, fast_backoff: None
) -> None:
    outcome = scenarios.lost_answers(h)
    holds(outcome)
    schedules = [e for e in h.proxy.exchanges("ScheduleKeyDeletion") if e.effective]
    assert len(schedules) == len({e.keys for e in schedules}) == 3


def test_sigkill_after_each_mutating_call_then_the_next_run_converges(h: Harness) -> None:
    # k = 1..K, K the mutating calls of a fault-free run (migration, stamps, alias refreshes,
    # marks, schedules): each run is killed right after its k-th call took effect.
    outcome = scenarios.kill_matrix(h)
    holds(outcome)
    assert outcome.trials >= 6
    assert outcome.runs == 2 * outcome.trials
    for operation in ("TagResource", "UpdateAlias", "ScheduleKeyDeletion"):
        assert operation in outcome.faults
    # (a run that finished before its kill is a problem of the outcome: "was not killed")


def test_two_daemons_reclaiming_at_once_schedule_each_key_once(h: Harness) -> None:
    outcome = scenarios.two_daemons(h)
    holds(outcome)
    assert [run.code for run in outcome.runs_log] == [0, 0]
    refused = [
        e for e in h.proxy.exchanges("ScheduleKeyDeletion") if e.error == "KMSInvalidStateException"
    ]
    assert len(refused) == 3  # the losing side of each race, treated as done
    for run in outcome.runs_log:
        assert run.out.count("success  schedule_deletion") == 3, run.out


@pytest.mark.parametrize(
    ("minutes", "tolerance", "code"),
    [(4, "5m", 0), (-4, "5m", 0), (4, "1m", 4), (-4, "1m", 4)],
    ids=["ahead-within", "behind-within", "ahead-past-tolerance", "behind-past-tolerance"],
)
def test_a_skewed_host_clock_judges_and_stamps_on_awss_clock(
    h: Harness, minutes: int, tolerance: str, code: int
) -> None:
    outcome = scenarios.clock_skew(h, minutes, tolerance=tolerance)
    holds(outcome)
    assert outcome.runs_log[0].code == code
    assert outcome.world is not None
    stamp = h.emulator.tags(outcome.world.arn("own x509-CA-A (alias target)"))[
        spire.TAG_LAST_UPDATE
    ]
    assert abs(int(stamp) - h.proxy.aws_time()) < 30  # AWS's clock, not the host's
    short = state(h, outcome, "peer key 2 minutes short of stale by AWS's clock")
    assert short == ("Enabled", "true")


@pytest.mark.parametrize("minutes", [15 * 24 * 60, -15 * 24 * 60], ids=["ahead", "behind"])
def test_a_clock_aws_refuses_changes_nothing_and_says_why(h: Harness, minutes: int) -> None:
    outcome = scenarios.clock_skew(h, minutes)
    holds(outcome)
    assert outcome.runs_log[0].code == 1
    refused = [e for e in h.proxy.exchanges() if e.error == "InvalidSignatureException"]
    assert refused and len(refused) == len(h.proxy.exchanges())


@pytest.mark.parametrize("minutes", [4, -4], ids=["host-clock-ahead", "host-clock-behind"])
def test_keys_listing_judges_staleness_on_awss_clock(h: Harness, minutes: int) -> None:
    holds(scenarios.keys_listing_under_clock_skew(h, minutes))


def test_an_alias_a_replica_rotates_while_keys_are_stamped_is_not_reverted(h: Harness) -> None:
    holds(scenarios.replica_rotates_alias(h, before="TagResources"))


@pytest.mark.xfail(
    strict=True,
    reason="KNOWN LIMIT: UpdateAlias has no condition in AWS's API, so a rotation that lands "
    "between the daemon's re-read of the alias (DescribeKey right before the write) and its "
    "UpdateAlias is reverted. The gap is one round trip: against a real SPIRE server rotating "
    "every 6 s with two daemons refreshing every 1.3 s (make interop), 4 of 96 rotations were "
    "reverted, against 17 of 102 before the re-read; at SPIRE's default cadence (a rotation "
    "every ~12 h, a refresh every 6 h) about one in a million",
)
def test_an_alias_a_replica_rotates_just_before_the_alias_refresh_is_not_reverted(
    h: Harness,
) -> None:
    holds(scenarios.replica_rotates_alias(h, before="UpdateAlias"))


def test_an_alias_a_replica_rotates_after_the_observation_is_not_reverted(h: Harness) -> None:
    # the rotation lands after the run read the alias and before its re-read: the re-read
    # sees the new target and the refresh leaves the alias alone
    holds(scenarios.replica_rotates_alias(h, before="DescribeKey", nth=2))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=st.lists(scenarios.key_specs(), min_size=4, max_size=10))
def test_malformed_and_hand_edited_tags_reclaim_only_what_the_oracle_allows(
    h: Harness, specs: list[KeySpec]
) -> None:
    outcome = scenarios.malformed_tags(h, specs)
    holds(outcome)
    assert outcome.world is not None
    now = time.time()
    for i, spec in enumerate(specs):
        arn = outcome.world.arn(f"#{i} {spec}")
        if h.emulator.key_state(arn) == "PendingDeletion":
            assert spec.expected(now) == "reclaimed", spec


def test_the_oracle_knows_malformed_values() -> None:
    now = 1_800_000_000
    stale, fresh = str(now - 20 * 86400), str(now - 86400)

    def verdict(last_update: str | None, active: str | None = "true", **kw: Any) -> str:
        fields = {"trust_domain": scenarios.TD, "server_id": "s", "key_id": "k"}
        fields.update(kw)
        return KeySpec(active=active, last_update=last_update, **fields).expected(now)

    assert verdict(stale) == verdict(None) == "reclaimed"
    assert verdict(fresh) == "fresh"
    assert verdict(fresh, "false") == "inactive"
    assert verdict(str(now + 86400)) == "future"
    for bad in (f" {stale}", f"+{stale}", f"{stale}.0", "0" + stale, "١٢٣", "", str(2**63)):
        assert verdict(bad) == "malformed", bad
    assert verdict(stale, "True") == verdict(stale, None) == "malformed"
    assert verdict(stale, server_id="") == verdict(stale, key_id=None) == "malformed"
    assert verdict(stale, trust_domain="Example.org") == "absent"


@pytest.mark.parametrize("alias_age_days", [0, 20], ids=["alias-just-updated", "alias-20-days"])
def test_mixed_fleet_alias_mode_peer_kept_only_while_its_alias_is_fresh(
    h: Harness, alias_age_days: int
) -> None:
    outcome = scenarios.mixed_fleet(h, alias_age_days)
    holds(outcome)
    expected = ("Enabled", "true") if alias_age_days == 0 else ("PendingDeletion", "false")
    for name in (
        "alias-mode peer x509-CA-A (tag 20 days old)",
        "alias-mode peer JWT-Signer-A (no last-update tag)",
    ):
        assert state(h, outcome, name) == expected, name


def test_operator_restored_keys_are_not_deleted_again_without_a_fresh_stale_verdict(
    h: Harness,
) -> None:
    outcome = scenarios.operator_restore(h)
    holds(outcome)
    assert state(h, outcome, "cancelled (left Disabled)") == ("Disabled", "false")
    assert state(h, outcome, "cancelled, enabled, re-tagged active and fresh") == (
        "Enabled",
        "true",
    )
    assert state(h, outcome, "cancelled, enabled, protected") == ("Enabled", "false")
    # Enabled again but still tagged false and stale: judged stale afresh, as documented.
    assert state(h, outcome, "cancelled and enabled only (still tagged stale, false)") == (
        "PendingDeletion",
        "false",
    )


@pytest.mark.parametrize("label", list(scenarios.DENIALS))
def test_access_denied_reports_the_failed_keys_and_carries_on(h: Harness, label: str) -> None:
    outcome = scenarios.access_denied(h, label)
    holds(outcome)
    denial = scenarios.DENIALS[label]
    first = outcome.runs_log[0]
    assert first.code == (3 if "failure " in first.out else 0), first.out
    if denial.must_fail:
        assert first.code == 3
    # The rest went on: refresh stamped this server's keys unless tagging itself is denied.
    if "TagResource" not in denial.operations:
        assert state(h, outcome, "own JWT-Signer-A (tag mode)") == ("Enabled", "true")
        assert "success  stamp" in first.out


def test_reliability_table_renders_every_column() -> None:
    ok = ScenarioOutcome("a", faults="throttling", runs=3, converged_trials=1)
    partial = ScenarioOutcome("b", faults="kill", runs=18, trials=9, converged_trials=8)
    partial.wrongly_touched.add("serving key")
    text = reliability.table([("row a", ok, 1.0), ("row b", partial, 12.5)])
    lines = text.splitlines()
    assert lines[0].split() == [
        "scenario",
        "faults",
        "injected",
        "runs",
        "converged",
        "wrongly",
        "touched",
        "time",
    ]
    assert lines[2].split()[-4:] == ["3", "yes", "0", "1.0s"]
    assert lines[3].split()[-4:] == ["18", "8/9", "1", "12.5s"]
