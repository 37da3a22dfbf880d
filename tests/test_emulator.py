"""The test harness itself, checked over HTTP with real aioboto3 clients.

The clients are built from the standard AWS configuration only (``aioboto3.Session()`` and the
environment the ``aws`` fixture sets), exactly as the daemon builds its own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aioboto3
import pytest

from daemon import spire
from devtools.emulator import ACCOUNT_ID, REGION, Emulator

pytestmark = pytest.mark.integration

TD = "example.org"
SERVER = "0b6a1bd4-2a5f-4a8b-9a4e-1f0e7c6d5a43"
OTHER_SERVER = "d3f5c6a1-7b8e-4c2d-9f0a-123456789abc"


@dataclass
class Clients:
    kms: Any
    tagging: Any


@pytest.fixture
async def clients(aws: Emulator) -> AsyncIterator[Clients]:
    session = aioboto3.Session()
    async with session.client("kms") as kms, session.client("resourcegroupstaggingapi") as tagging:
        yield Clients(kms, tagging)


async def spire_discovery(tagging: Any, trust_domain: str, server_id: str) -> list[dict[str, Any]]:
    """SPIRE's tag-mode discovery query, following every page."""
    found: list[dict[str, Any]] = []
    paginator = tagging.get_paginator("get_resources")
    async for page in paginator.paginate(
        ResourceTypeFilters=["kms:key"],
        TagFilters=[
            {"Key": spire.TAG_TRUST_DOMAIN, "Values": [trust_domain]},
            {"Key": spire.TAG_SERVER_ID, "Values": [server_id]},
            {"Key": spire.TAG_ACTIVE, "Values": [spire.ACTIVE_TRUE]},
        ],
        ResourcesPerPage=100,
    ):
        found.extend(page["ResourceTagMappingList"])
    return found


async def all_aliases(kms: Any) -> dict[str, str | None]:
    aliases: dict[str, str | None] = {}
    async for page in kms.get_paginator("list_aliases").paginate():
        for entry in page["Aliases"]:
            aliases[entry["AliasName"]] = entry.get("TargetKeyId")
    return aliases


def key_id_of(arn: str) -> str:
    return arn.split(":key/", 1)[1]


async def test_clients_reach_the_emulator_through_aws_endpoint_url(
    aws: Emulator, clients: Clients
) -> None:
    assert clients.kms.meta.endpoint_url == aws.endpoint_url
    assert clients.tagging.meta.endpoint_url == aws.endpoint_url
    assert clients.kms.meta.region_name == REGION
    arn = aws.create_key()
    listed = await clients.kms.list_keys()
    assert [k["KeyArn"] for k in listed["Keys"]] == [arn]
    assert arn.startswith(f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/")


async def test_spire_key_is_found_by_spire_tag_discovery_and_decoys_are_not(
    aws: Emulator, clients: Clients
) -> None:
    now = int(time.time())
    wanted = aws.spire_key(trust_domain=TD, server_id=SERVER, key_id="x509-CA-A", last_update=now)
    decoys = [
        aws.spire_key(trust_domain=TD, server_id=OTHER_SERVER, key_id="x509-CA-A", last_update=now),
        aws.spire_key(
            trust_domain="example.org2", server_id=SERVER, key_id="x509-CA-B", last_update=now
        ),
        aws.spire_key(
            trust_domain=TD,
            server_id=SERVER,
            key_id="JWT-Signer-A",
            last_update=now,
            active="false",
        ),
        aws.spire_key(
            trust_domain=TD, server_id=SERVER, key_id="JWT-Signer-B", last_update=now, active=None
        ),
        aws.spire_key(
            trust_domain=TD, server_id=SERVER, key_id="WIT-Signer-A", last_update=None, tagged=False
        ),
    ]
    aws.foreign_keys(200)

    found = await spire_discovery(clients.tagging, TD, SERVER)

    assert [r["ResourceARN"] for r in found] == [wanted]
    assert {t["Key"]: t["Value"] for t in found[0]["Tags"]} == spire.spire_tags(
        TD, SERVER, "x509-CA-A", now
    )
    assert wanted not in decoys


async def test_spire_key_looks_like_spires(aws: Emulator, clients: Clients) -> None:
    arn = aws.spire_key(
        trust_domain=TD,
        server_id=SERVER,
        key_id="bundle-acme-a.b+c",
        last_update=None,
        extra_tags={"spire-protect": "true"},
    )

    meta = (await clients.kms.describe_key(KeyId=arn))["KeyMetadata"]
    assert meta["Description"] == "SPIRE_SERVER_KEY/example_org/bundle-acme-a.b+c"
    assert meta["KeySpec"] == "ECC_NIST_P256"
    assert meta["KeyUsage"] == "SIGN_VERIFY"
    assert meta["KeyState"] == "Enabled"

    expected_tags = {
        spire.TAG_TRUST_DOMAIN: TD,
        spire.TAG_SERVER_ID: SERVER,
        spire.TAG_ACTIVE: "true",
        spire.TAG_KEY_ID: "bundle-acme-a.b+c",
        "spire-protect": "true",
    }
    assert aws.tags(arn) == expected_tags
    over_http = await clients.kms.list_resource_tags(KeyId=arn)
    assert {t["TagKey"]: t["TagValue"] for t in over_http["Tags"]} == expected_tags

    alias = spire.alias_name(TD, SERVER, "bundle-acme-a.b+c")
    assert alias == f"alias/SPIRE_SERVER/example_org/{SERVER}/bundle-acme-a_2eb_2bc"
    assert aws.alias_target(alias) == key_id_of(arn)


async def test_created_at_backdates_creation_date(aws: Emulator, clients: Clients) -> None:
    created = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    arn = aws.spire_key(
        trust_domain=TD, server_id=SERVER, key_id="x509-CA-A", last_update=1, created_at=created
    )
    fresh = aws.create_key()

    old_meta = (await clients.kms.describe_key(KeyId=arn))["KeyMetadata"]
    new_meta = (await clients.kms.describe_key(KeyId=fresh))["KeyMetadata"]

    assert abs(old_meta["CreationDate"] - created) < timedelta(milliseconds=1)
    assert abs(new_meta["CreationDate"] - datetime.now(UTC)) < timedelta(minutes=1)


def test_created_at_must_be_timezone_aware(aws: Emulator) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        aws.create_key(created_at=datetime(2025, 1, 1))


async def test_list_aliases_shows_spire_and_foreign_aliases(
    aws: Emulator, clients: Clients
) -> None:
    arn = aws.spire_key(trust_domain=TD, server_id=SERVER, key_id="JWT-Signer-A", last_update=1)
    aws.foreign_keys(10, aliases_every=5)

    aliases = await all_aliases(clients.kms)

    alias = spire.alias_name(TD, SERVER, "JWT-Signer-A")
    assert aliases[alias] == key_id_of(arn) == aws.alias_target(alias)
    assert {a for a in aliases if a.startswith("alias/team-")} == {"alias/team-0", "alias/team-5"}
    assert aws.alias_target("alias/team-5") == aliases["alias/team-5"]
    assert aws.alias_target("alias/nope") is None


def test_create_alias_refuses_what_aws_refuses(aws: Emulator) -> None:
    arn = aws.create_key()
    aws.create_alias("alias/SPIRE_SERVER/example_org/x/ok", arn)
    with pytest.raises(ValueError, match="already exists"):
        aws.create_alias("alias/SPIRE_SERVER/example_org/x/ok", arn)
    for bad in ("alias/SPIRE_SERVER/example.org/x", "alias/aws/mine", "noprefix", "alias/a:b"):
        with pytest.raises(ValueError):
            aws.create_alias(bad, arn)


async def test_foreign_keys_are_tagged_by_team_and_invisible_to_spire(
    aws: Emulator, clients: Clients
) -> None:
    aws.foreign_keys(100, aliases_every=5)
    aws.foreign_keys(3, aliases_every=0)  # numbering continues: 100..102, no aliases

    assert len(aws.all_keys()) == 103
    team: list[str] = []
    async for page in clients.tagging.get_paginator("get_resources").paginate(
        ResourceTypeFilters=["kms:key"], TagFilters=[{"Key": "team", "Values": ["x"]}]
    ):
        team.extend(r["ResourceARN"] for r in page["ResourceTagMappingList"])
    assert len(team) == 52  # even i in 0..102
    assert await spire_discovery(clients.tagging, TD, SERVER) == []
    assert aws.alias_target("alias/team-100") is None


async def test_reset_clears_state_and_seeding_works_again(aws: Emulator, clients: Clients) -> None:
    aws.spire_key(trust_domain=TD, server_id=SERVER, key_id="x509-CA-A", last_update=1)
    aws.foreign_keys(20)
    aws.clock_skew = timedelta(hours=2)

    aws.reset()

    assert aws.all_keys() == []
    assert aws.clock_skew == timedelta(0)
    assert (await clients.kms.list_keys())["Keys"] == []
    aliases = await all_aliases(clients.kms)
    assert [a for a in aliases if not a.startswith("alias/aws/")] == []
    assert await spire_discovery(clients.tagging, TD, SERVER) == []

    # moto rebuilds its backends after a reset; in-process seeding must land in the new ones.
    arn = aws.spire_key(trust_domain=TD, server_id=SERVER, key_id="x509-CA-A", last_update=2)
    assert [r["ResourceARN"] for r in await spire_discovery(clients.tagging, TD, SERVER)] == [arn]


async def test_responses_carry_a_date_header(aws: Emulator, clients: Clients) -> None:
    kms_response = await clients.kms.list_keys()
    tagging_response = await clients.tagging.get_resources()

    for response in (kms_response, tagging_response):
        date = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
        assert abs(date - datetime.now(UTC)) < timedelta(seconds=5)


async def test_clock_skew_shifts_the_date_header(aws: Emulator, clients: Clients) -> None:
    aws.clock_skew = timedelta(minutes=-30)

    response = await clients.kms.list_keys()

    date = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
    assert abs(date - (datetime.now(UTC) - timedelta(minutes=30))) < timedelta(seconds=5)


async def test_schedule_key_deletion_by_key_id(aws: Emulator, clients: Clients) -> None:
    arn = aws.spire_key(trust_domain=TD, server_id=SERVER, key_id="x509-CA-B", last_update=1)

    response = await clients.kms.schedule_key_deletion(KeyId=key_id_of(arn), PendingWindowInDays=7)

    assert response["KeyId"] in (key_id_of(arn), arn)
    assert abs(response["DeletionDate"] - (datetime.now(UTC) + timedelta(days=7))) < timedelta(
        minutes=1
    )
    assert aws.key_state(arn) == "PendingDeletion"
    assert aws.key_state(key_id_of(arn)) == "PendingDeletion"
    meta = (await clients.kms.describe_key(KeyId=arn))["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    assert meta["Enabled"] is False


async def test_tags_written_over_http_are_read_back_in_process(
    aws: Emulator, clients: Clients
) -> None:
    arn = aws.spire_key(trust_domain=TD, server_id=SERVER, key_id="x509-CA-A", last_update=1)

    await clients.tagging.tag_resources(
        ResourceARNList=[arn], Tags={spire.TAG_LAST_UPDATE: "1767225600"}
    )
    await clients.kms.tag_resource(
        KeyId=arn, Tags=[{"TagKey": spire.TAG_ACTIVE, "TagValue": "false"}]
    )

    assert aws.tags(arn)[spire.TAG_LAST_UPDATE] == "1767225600"
    assert aws.tags(arn)[spire.TAG_ACTIVE] == "false"


def test_unknown_key_is_a_clear_error(aws: Emulator) -> None:
    with pytest.raises(KeyError, match="no such key"):
        aws.key_state("arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000")
