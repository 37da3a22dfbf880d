"""Job-level behaviour against the emulator: clock handling and stopping (integration)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from daemon import spire
from daemon.aws.client import AwsOptions
from daemon.aws.session import open_aws
from daemon.jobs import Context, reclaim_once, refresh_once
from daemon.settings import Settings, load_settings
from devtools.emulator import Emulator
from tests.world import SERVER, TD, tag_only_key

pytestmark = pytest.mark.integration


def settings() -> Settings:
    return load_settings(
        None,
        env={
            "SPIRE_KMS_RECONCILER_TRUST_DOMAIN": TD,
            "SPIRE_KMS_RECONCILER_REGION": "us-east-1",
            "SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_VALUE": SERVER,
            # Clock handling, not liveness, is tested here (tests/test_liveness.py has that).
            "SPIRE_KMS_RECONCILER_ASSUME_SPIRE_ALIVE": "true",
        },
    )


@pytest.mark.parametrize("skew", [timedelta(days=-15), timedelta(days=15)])
async def test_refresh_stamps_aws_time_when_local_clock_is_off(
    aws: Emulator, skew: timedelta
) -> None:
    """A clock 15 days behind would make peers reclaim this server's serving keys."""
    now = datetime.now(UTC)
    arn = aws.spire_key(
        TD, SERVER, "x509-CA-A", last_update=int((now - timedelta(hours=6)).timestamp())
    )
    aws.clock_skew = skew  # AWS's Date header is `skew` away from the local clock
    async with open_aws(AwsOptions(region="us-east-1", max_attempts=1)) as api:
        report = await refresh_once(Context(settings(), SERVER, api))
    assert report.outcome.value == "success"
    stamped = int(aws.tags(arn)[spire.TAG_LAST_UPDATE])
    aws_now = (now + skew).timestamp()
    assert abs(stamped - aws_now) < 120, (stamped, aws_now)


async def test_refresh_stamps_awss_time_even_within_tolerance(aws: Emulator) -> None:
    """Stamps are on AWS's clock always: a host clock stepped mid-run cannot move them."""
    now = datetime.now(UTC)
    arn = aws.spire_key(
        TD, SERVER, "x509-CA-A", last_update=int((now - timedelta(hours=6)).timestamp())
    )
    aws.clock_skew = timedelta(minutes=2)
    async with open_aws(AwsOptions(region="us-east-1", max_attempts=1)) as api:
        await refresh_once(Context(settings(), SERVER, api))
    stamped = int(aws.tags(arn)[spire.TAG_LAST_UPDATE])
    assert abs(stamped - (now + timedelta(minutes=2)).timestamp()) < 5


async def test_stopping_sends_no_new_write_and_reports_skipped(aws: Emulator) -> None:
    """On shutdown, calls in flight finish and no new mutating call starts."""
    arn = tag_only_key(aws, "peer", "x509-CA-A", 20)
    # A second live key keeps the blast-radius fraction at one half.
    tag_only_key(aws, "peer2", "x509-CA-A", 0)
    async with open_aws(AwsOptions(region="us-east-1", max_attempts=1)) as api:
        api.stopping = True
        report = await reclaim_once(Context(settings(), SERVER, api))
    assert {r.outcome.value for r in report.results} == {"skipped"}
    assert len(report.results) == 2
    assert report.aws_calls.get("TagResource", 0) == 0
    assert aws.tags(arn)[spire.TAG_ACTIVE] == "true"
    assert aws.key_state(arn) == "Enabled"


async def test_migration_never_takes_a_key_tagged_for_another_server(aws: Emulator) -> None:
    """An alias of this server pointing at another server's tagged key: left as it is."""
    now = datetime.now(UTC)
    theirs = tag_only_key(aws, "peer", "x509-CA-A", 0, created_at=now - timedelta(days=9))
    aws.create_alias(spire.alias_name(TD, SERVER, "x509-CA-A"), theirs)
    legacy = aws.spire_key(
        TD,
        SERVER,
        "JWT-Signer-A",
        last_update=None,
        tagged=False,
        created_at=now - timedelta(days=9),
    )
    before = aws.tags(theirs)
    async with open_aws(AwsOptions(region="us-east-1", max_attempts=1)) as api:
        report = await refresh_once(Context(settings(), SERVER, api))
    assert aws.tags(theirs) == before
    assert aws.tags(legacy)[spire.TAG_SERVER_ID] == SERVER  # the untagged one is migrated
    assert "alias_points_elsewhere" in {f.anomaly.value for f in report.plan.findings}
    assert report.aws_calls["GetResources"] == 2  # the td+id scan, then the targets' tags
    # Nor is our alias on their key refreshed: that would keep their key alias-fresh forever.
    refreshed = [r.action.alias_name for r in report.results if r.action.alias_name]
    assert spire.alias_name(TD, SERVER, "x509-CA-A") not in refreshed
