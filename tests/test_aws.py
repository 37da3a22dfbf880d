"""The AWS layer: error translation, pagination, batching, partial failures, fallback, retries.

The translation tests build botocore errors by hand; the rest run real aioboto3 clients against
the emulator through the fault proxy, which counts every request and injects AWS's failures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aioboto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from daemon import spire
from daemon.aws.client import AwsApi, AwsOptions
from daemon.aws.clock import RunClock, current_run_clock, run_clock
from daemon.aws.errors import (
    AccessDenied,
    AwsError,
    InvalidState,
    NotFound,
    Stopping,
    Throttled,
    Unavailable,
    translate,
)
from daemon.aws.limits import RateLimiter
from daemon.aws.session import open_aws, release_endpoint_table
from daemon.jobs import Context, refresh_once
from daemon.model import Outcome
from daemon.settings import Settings
from devtools.emulator import Emulator
from devtools.faultproxy import DEFAULT_PRINCIPAL, FaultProxy
from tests.world import PEER, SERVER, TD


def client_error(
    code: str, message: str, status: int = 400, op: str = "GetResources"
) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        op,
    )


# ------------------------------------------------------------------ error translation (no AWS)


def test_access_denied_json_names_action_and_principal() -> None:
    message = (
        f"User: {DEFAULT_PRINCIPAL} is not authorized to perform: tag:GetResources because no "
        "identity-based policy allows the tag:GetResources action"
    )

    error = translate("GetResources", client_error("AccessDeniedException", message))

    assert isinstance(error, AccessDenied)
    assert error.action == "tag:GetResources"
    assert error.principal == DEFAULT_PRINCIPAL
    assert error.code == "AccessDeniedException"
    explained = error.explain()
    assert "identity-based" in explained
    assert "key policy" in explained
    assert DEFAULT_PRINCIPAL in explained
    # SPIRE's own advice, word for word, beside ours
    assert (
        'tag-based key discovery requires the "tag:GetResources" permission in an identity-based'
        " IAM policy (it cannot be granted through the KMS key policy)"
    ) in explained
    assert "grant the permission or disable enable_tag_based_key_discovery" in explained
    assert explained.endswith(f"AccessDeniedException: {message}")


def test_access_denied_on_a_kms_action_with_a_role_principal() -> None:
    role = "arn:aws:sts::123456789012:assumed-role/spire-reconciler/i-0abc"
    message = (
        f"User: {role} is not authorized to perform: kms:ScheduleKeyDeletion on resource: "
        "arn:aws:kms:us-east-1:123456789012:key/abc because no resource-based policy allows "
        "the kms:ScheduleKeyDeletion action"
    )

    error = translate(
        "ScheduleKeyDeletion",
        client_error("AccessDeniedException", message, op="ScheduleKeyDeletion"),
    )

    assert isinstance(error, AccessDenied)
    assert error.action == "kms:ScheduleKeyDeletion"
    assert error.principal == role
    assert "kms:ScheduleKeyDeletion" in error.explain()
    assert role in error.explain()


def test_access_denied_without_a_parsable_message_falls_back_to_the_operation() -> None:
    error = translate("TagResources", client_error("AccessDeniedException", "Access denied"))

    assert isinstance(error, AccessDenied)
    assert error.action == "tag:TagResources"
    assert error.principal is None
    assert "the daemon's AWS principal" in error.explain()


def test_moto_xml_403_body_is_read_as_access_denied() -> None:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse>\n  <Errors>\n    <Error>\n'
        "      <Code>AccessDenied</Code>\n"
        "      <Message>User: arn:aws:iam::123456789012:user/no-tag is not authorized to "
        "perform: tagging:GetResources</Message>\n"
        "    </Error>\n  </Errors>\n  <RequestId>abc</RequestId>\n</ErrorResponse>"
    )

    error = translate("GetResources", client_error("403", body, status=403))

    assert isinstance(error, AccessDenied)
    assert error.code == "AccessDenied"
    assert error.principal == "arn:aws:iam::123456789012:user/no-tag"
    assert error.action == "tagging:GetResources"  # moto's prefix, as the message says
    assert "<" not in error.message
    assert "tag:GetResources" in error.explain()


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ThrottlingException", 400, Throttled),
        ("ThrottledException", 400, Throttled),
        ("TooManyRequestsException", 429, Throttled),
        ("KMSInvalidStateException", 400, InvalidState),
        ("NotFoundException", 400, NotFound),
        ("InternalFailure", 500, Unavailable),
        ("ValidationException", 400, AwsError),
    ],
)
def test_error_codes_map_to_typed_errors(code: str, status: int, kind: type[AwsError]) -> None:
    error = translate("DescribeKey", client_error(code, "something", status, op="DescribeKey"))

    assert type(error) is kind
    assert error.code == code
    assert error.operation == "DescribeKey"
    assert error.message == "something"


def test_connection_errors_are_unavailable() -> None:
    error = translate("DescribeKey", EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))

    assert isinstance(error, Unavailable)
    assert error.code == "EndpointConnectionError"


# ------------------------------------------------------------------ against the emulator


def options(proxy: FaultProxy, **kw: Any) -> AwsOptions:
    base: dict[str, Any] = {
        "region": "us-east-1",
        "endpoint_url": proxy.endpoint_url,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "max_attempts": 1,
        "mutating_calls_per_second": 50.0,
    }
    base.update(kw)
    return AwsOptions(**base)


@pytest.fixture
async def api(proxy: FaultProxy) -> AsyncIterator[AwsApi]:
    async with open_aws(options(proxy)) as api:
        yield api


def stale_peer_keys(emu: Emulator, n: int) -> list[str]:
    return [
        emu.spire_key(TD, PEER, f"bundle-acme-k{i}", last_update=1, alias=False) for i in range(n)
    ]


@pytest.mark.integration
async def test_get_resources_follows_every_page(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    # One tag a key: moto then fills pages by ResourcesPerPage (its TagsPerPage default of 100
    # would otherwise cut pages early, which AWS does not do when ResourcesPerPage is given).
    wanted = {aws.create_key(tags={spire.TAG_TRUST_DOMAIN: TD}) for _ in range(250)}
    aws.foreign_keys(40)

    found = await api.get_resources({spire.TAG_TRUST_DOMAIN: [TD]})

    assert {r.arn for r in found} == wanted
    assert len(found) == 250
    assert proxy.count("GetResources") == 3
    requests = proxy.requests("GetResources")
    assert all(r["ResourcesPerPage"] == 100 for r in requests)
    assert "PaginationToken" not in requests[0]
    assert all(r.get("PaginationToken") for r in requests[1:])
    assert api.stats.by_operation() == {"GetResources": 3}


@pytest.mark.integration
async def test_get_resources_finds_every_spire_key_across_short_pages(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    wanted = set(stale_peer_keys(aws, 250))
    aws.spire_key("example.org2", PEER, "x509-CA-A", last_update=1)

    found = await api.get_resources(
        {spire.TAG_TRUST_DOMAIN: [TD], spire.TAG_ACTIVE: ["true", "false"]}
    )

    assert {r.arn for r in found} == wanted
    assert all(r.tags[spire.TAG_SERVER_ID] == PEER for r in found)
    assert proxy.count("GetResources") >= 3


@pytest.mark.integration
async def test_tag_resources_batches_twenty_arns_a_call(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    arns = stale_peer_keys(aws, 45)

    failed = await api.tag_resources(arns, {spire.TAG_LAST_UPDATE: "1767225600"})

    assert failed == {}
    assert [len(r["ResourceARNList"]) for r in proxy.requests("TagResources")] == [20, 20, 5]
    assert all(aws.tags(arn)[spire.TAG_LAST_UPDATE] == "1767225600" for arn in arns)


class FakeTime:
    """A clock that only moves when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_rate_limiter_charges_a_call_its_cost() -> None:
    time_ = FakeTime()
    limiter = RateLimiter(10, clock=time_.clock, sleep=time_.sleep)

    await limiter.acquire(20)  # one token was there: it goes at once, twenty in debt
    assert time_.now == 0
    await limiter.acquire()  # waits until the twenty are paid back at 10 a second
    assert time_.now == pytest.approx(2.0)
    await limiter.acquire()
    assert time_.now == pytest.approx(2.1)


async def test_rate_limiter_never_exceeds_its_rate_over_a_stretch() -> None:
    time_ = FakeTime()
    limiter = RateLimiter(5, clock=time_.clock, sleep=time_.sleep)
    taken = 0
    for cost in [1, 20, 3, 1, 1, 20, 7] * 3:
        await limiter.acquire(cost)
        taken += cost
    # The last acquisition went at time_.now: everything before it was paid for by then.
    assert taken - cost <= 1 + 5 * time_.now
    with pytest.raises(ValueError):
        await limiter.acquire(0)


@pytest.mark.integration
async def test_tag_resources_is_paced_by_keys_and_shares_the_budget_with_tag_resource(
    aws: Emulator, proxy: FaultProxy
) -> None:
    # AWS tags each ARN of a TagResources call through KMS's TagResource (one quota, shared with
    # the SPIRE servers): at 50 keys a second, a call of 20 keys holds the next tagging call of
    # either kind back by 0.4 s. A lower bound, with room for the requests' own jitter: a busy
    # machine only makes the gap longer.
    arns = stale_peer_keys(aws, 21)
    async with open_aws(options(proxy, mutating_calls_per_second=50.0)) as api:
        await api.describe_key(arns[0])  # both clients connected before anything is timed
        await api.get_resources({spire.TAG_TRUST_DOMAIN: [TD]})
        assert await api.tag_resources(arns[:20], {spire.TAG_LAST_UPDATE: "1767225600"}) == {}
        await api.tag_resource(arns[20], {spire.TAG_LAST_UPDATE: "1767225600"})

    batch, single = proxy.exchanges("TagResources")[0], proxy.exchanges("TagResource")[0]
    assert single.at - batch.at >= 0.35


@pytest.mark.integration
async def test_a_write_waiting_for_its_rate_limit_is_not_sent_once_stopping(
    aws: Emulator, proxy: FaultProxy
) -> None:
    arns = stale_peer_keys(aws, 21)
    async with open_aws(options(proxy, mutating_calls_per_second=10.0)) as api:
        assert await api.tag_resources(arns[:20], {spire.TAG_ACTIVE: "false"}) == {}
        waiting = asyncio.create_task(api.tag_resource(arns[20], {spire.TAG_ACTIVE: "false"}))
        await asyncio.sleep(0.3)  # it waits 2 s for the twenty keys of the first call
        api.stopping = True
        with pytest.raises(Stopping):
            await waiting

    assert proxy.count("TagResource") == 0
    assert aws.tags(arns[20])[spire.TAG_ACTIVE] == "true"


@pytest.mark.integration
async def test_partial_throttle_retries_only_the_throttled_arn(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    arns = stale_peer_keys(aws, 3)
    proxy.fail_resources([arns[1]], times=1)

    failed = await api.tag_resources(arns, {spire.TAG_LAST_UPDATE: "1767225600"})

    assert failed == {}
    lists = [r["ResourceARNList"] for r in proxy.requests("TagResources")]
    assert lists == [arns, [arns[1]]]
    assert all(aws.tags(arn)[spire.TAG_LAST_UPDATE] == "1767225600" for arn in arns)


@pytest.mark.integration
async def test_partial_failure_that_is_not_a_throttle_is_reported_not_retried(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    arns = stale_peer_keys(aws, 3)
    entry = {
        "StatusCode": 400,
        "ErrorCode": "InvalidParameterException",
        "ErrorMessage": "tag limit exceeded",
    }
    proxy.fail_resources([arns[2]], entry=entry, times=5)

    failed = await api.tag_resources(arns, {spire.TAG_LAST_UPDATE: "1767225600"})

    assert set(failed) == {arns[2]}
    assert failed[arns[2]].code == "InvalidParameterException"
    assert proxy.count("TagResources") == 1
    assert spire.TAG_LAST_UPDATE in aws.tags(arns[0])
    assert aws.tags(arns[2])[spire.TAG_LAST_UPDATE] == "1"


@pytest.mark.integration
async def test_persistent_partial_throttle_gives_up_and_reports_the_arn(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    arns = stale_peer_keys(aws, 2)
    proxy.fail_resources([arns[0]], times=100)

    failed = await api.tag_resources(arns, {spire.TAG_LAST_UPDATE: "1767225600"})

    assert set(failed) == {arns[0]}
    assert isinstance(failed[arns[0]], Throttled)
    lists = [r["ResourceARNList"] for r in proxy.requests("TagResources")]
    assert lists[0] == arns
    assert all(lst == [arns[0]] for lst in lists[1:])
    assert len(lists) == 4  # the first call and three retries of the throttled ARN


@pytest.mark.integration
async def test_refresh_falls_back_to_kms_tag_resource_when_tag_resources_is_denied(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    now = datetime.now(UTC)
    serving = [
        aws.spire_key(
            TD,
            SERVER,
            kid,
            last_update=int(time.time()) - 86400,
            created_at=now - timedelta(days=20),
        )
        for kid in ("x509-CA-A", "JWT-Signer-A")
    ]
    proxy.deny("TagResources")
    settings = Settings(
        trust_domain=TD, key_identifier_value=SERVER, region="us-east-1", assume_spire_alive=True
    )
    ctx = Context(settings, SERVER, api)

    report = await refresh_once(ctx)

    assert report.outcome is Outcome.SUCCESS, report
    assert proxy.count("TagResources") == 1
    assert proxy.count("TagResource") == 2
    for arn in serving:
        assert abs(int(aws.tags(arn)[spire.TAG_LAST_UPDATE]) - time.time()) < 60
    assert ctx.state.tagging.batch is False

    # The next run of the same process goes straight to kms:TagResource.
    proxy.reset()
    aws.clock_skew = timedelta(seconds=5)  # AWS's clock moved on: a new stamp to write
    report = await refresh_once(ctx)
    assert report.outcome is Outcome.SUCCESS, report
    assert proxy.count("TagResources") == 0
    assert proxy.count("TagResource") == 2


@pytest.mark.integration
async def test_throttling_is_retried_then_succeeds(aws: Emulator, proxy: FaultProxy) -> None:
    arn = aws.create_key()
    proxy.throttle("DescribeKey", times=2)

    async with open_aws(options(proxy, max_attempts=3)) as api:
        meta = await api.describe_key(arn)

    assert meta.arn == arn
    assert meta.state == "Enabled"
    assert proxy.count("DescribeKey") == 3
    assert api.stats.calls[("DescribeKey", "success")] == 1


@pytest.mark.integration
async def test_throttling_beyond_max_attempts_raises_throttled(
    aws: Emulator, proxy: FaultProxy
) -> None:
    proxy.throttle("GetResources")

    async with open_aws(options(proxy, max_attempts=2)) as api:
        with pytest.raises(Throttled) as caught:
            await api.get_resources({spire.TAG_TRUST_DOMAIN: [TD]})

    assert caught.value.code == "ThrottledException"
    assert proxy.count("GetResources") == 2
    assert api.stats.calls[("GetResources", "throttled")] == 1


@pytest.mark.integration
async def test_server_errors_are_retried(aws: Emulator, proxy: FaultProxy) -> None:
    arn = aws.create_key()
    proxy.server_error("DescribeKey", times=1)

    async with open_aws(options(proxy, max_attempts=3)) as api:
        meta = await api.describe_key(arn)

    assert meta.arn == arn
    assert proxy.count("DescribeKey") == 2


@pytest.mark.integration
async def test_access_denied_is_not_retried(aws: Emulator, proxy: FaultProxy) -> None:
    proxy.deny("GetResources")

    async with open_aws(options(proxy, max_attempts=3)) as api:
        with pytest.raises(AccessDenied) as caught:
            await api.get_resources({spire.TAG_TRUST_DOMAIN: [TD]})

    assert caught.value.action == "tag:GetResources"
    assert caught.value.principal == DEFAULT_PRINCIPAL
    assert proxy.count("GetResources") == 1


@pytest.mark.integration
async def test_invalid_state_and_not_found_come_back_typed(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    arn = aws.create_key()
    proxy.invalid_state("TagResource")

    with pytest.raises(InvalidState):
        await api.tag_resource(arn.split("/")[-1], {"a": "b"})
    with pytest.raises(NotFound):
        await api.describe_key("alias/SPIRE_SERVER/example_org/nobody/x509-CA-A")


@pytest.mark.integration
async def test_aws_clock_is_read_from_the_date_header(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    aws.clock_skew = timedelta(days=15)
    assert current_run_clock() is None
    with run_clock() as clock:
        assert clock.now() is None  # no response yet
        await api.get_resources({spire.TAG_TRUST_DOMAIN: [TD]})
        assert clock.responses == 1
        aws_now, local = clock.both()
    assert aws_now is not None
    assert abs(aws_now - (local + timedelta(days=15))) < timedelta(seconds=5)
    # Outside a run, responses are not kept.
    await api.get_resources({spire.TAG_TRUST_DOMAIN: [TD]})
    assert clock.responses == 1


def test_run_clock_carries_awss_time_on_the_monotonic_clock() -> None:
    """The host's wall clock can step; AWS's time is its Date plus monotonic time since."""
    ticks = [100.0]
    wall = [datetime(2026, 1, 1, tzinfo=UTC)]
    clock = RunClock(monotonic=lambda: ticks[0], wall=lambda: wall[0])
    seen = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    clock.observe(seen)
    ticks[0] += 30.5
    wall[0] += timedelta(days=30)  # a step of the host clock changes nothing
    assert clock.now() == seen + timedelta(seconds=30.5)
    # A later Date that says less than the estimate (whole seconds) does not pull it back...
    clock.observe(seen + timedelta(seconds=30))
    assert clock.now() == seen + timedelta(seconds=30.5)
    # ...one that says more moves it forward.
    clock.observe(seen + timedelta(seconds=32))
    assert clock.now() == seen + timedelta(seconds=32)
    assert clock.both() == (seen + timedelta(seconds=32), wall[0])


@pytest.mark.integration
async def test_clients_follow_aws_endpoint_url_from_the_environment(aws: Emulator) -> None:
    arn = aws.create_key()

    async with open_aws(AwsOptions(connect_timeout=2.0, read_timeout=5.0)) as api:
        meta = await api.describe_key(arn)

    assert meta.arn == arn
    assert api.region == "us-east-1"


@pytest.mark.integration
async def test_the_parsed_endpoint_table_is_released_and_clients_keep_working(
    aws: Emulator,
) -> None:
    # The table is 7 MB of objects (a third of the daemon's peak growth in a 5,000-key run):
    # this fails when a botocore upgrade moves it out of reach of release_endpoint_table.
    arn = aws.create_key()
    session = aioboto3.Session(region_name="us-east-1")
    core = session._session
    loader = core.get_component("data_loader")
    async with session.client("kms") as kms:
        assert any(k[1:2] == ("endpoints",) for k in loader._cache)
        built = core._get_internal_component("endpoint_resolver")
        release_endpoint_table(session)

        assert not any(k[1:2] == ("endpoints",) for k in loader._cache)
        assert "endpoint_resolver" not in core._internal_components._components
        described = await kms.describe_key(KeyId=arn)
        assert described["KeyMetadata"]["Arn"] == arn
        # Anything that asks again gets a resolver built anew, not an error.
        async with session.client("resourcegroupstaggingapi") as tagging:
            assert "ResourceTagMappingList" in await tagging.get_resources()
        assert core._get_internal_component("endpoint_resolver") is not built


@pytest.mark.integration
async def test_stamp_report_says_which_keys_failed_when_a_later_batch_fails(
    aws: Emulator, proxy: FaultProxy, api: AwsApi
) -> None:
    now = datetime.now(UTC)
    arns = [
        aws.spire_key(
            TD,
            SERVER,
            f"bundle-acme-k{i}",
            last_update=int(time.time()) - 86400,
            created_at=now - timedelta(days=20),
        )
        for i in range(25)
    ]
    proxy.throttle("TagResources", skip=1)  # the first batch of 20 goes through, the second fails
    settings = Settings(
        trust_domain=TD, key_identifier_value=SERVER, region="us-east-1", assume_spire_alive=True
    )

    report = await refresh_once(Context(settings, SERVER, api))

    stamped = {a for a in arns if abs(int(aws.tags(a)[spire.TAG_LAST_UPDATE]) - time.time()) < 60}
    assert len(stamped) == 20
    failed = {
        r.action.arn
        for r in report.results
        if r.action.kind.value == "stamp" and r.outcome is Outcome.FAILURE
    }
    assert failed == set(arns) - stamped


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AWS_REGION": "eu-west-1"}, "eu-west-1"),  # only AWS_REGION, as SPIRE's env file may set
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}, "eu-west-1"),  # Go's order
        ({"AWS_DEFAULT_REGION": "us-west-2"}, "us-west-2"),
        ({"AWS_REGION": "", "AWS_DEFAULT_REGION": "us-west-2"}, "us-west-2"),
    ],
)
async def test_the_region_comes_from_aws_region_then_aws_default_region(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    async with open_aws(options(proxy, region=None)) as api:
        assert api.region == expected
        assert await api.get_resources({spire.TAG_TRUST_DOMAIN: [TD]}) == []


async def test_the_region_setting_wins_over_the_environment(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    async with open_aws(options(proxy, region="us-east-1")) as api:
        assert api.region == "us-east-1"
