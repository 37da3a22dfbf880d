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
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from moto.kms.responses import KmsResponse
from moto.kms.utils import RESERVED_ALIASE_TARGET_KEY_IDS

from daemon import spire
from devtools.emulator import ACCOUNT_ID, REGION, Emulator, _pages_kms_lists
from tests.world import SERVER, TD

pytestmark = pytest.mark.integration

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
    wanted = aws.spire_key(TD, SERVER, "x509-CA-A", last_update=now)
    decoys = [
        aws.spire_key(TD, OTHER_SERVER, "x509-CA-A", last_update=now),
        aws.spire_key("example.org2", SERVER, "x509-CA-B", last_update=now),
        aws.spire_key(TD, SERVER, "JWT-Signer-A", last_update=now, active="false"),
        aws.spire_key(TD, SERVER, "JWT-Signer-B", last_update=now, active=None),
        aws.spire_key(TD, SERVER, "WIT-Signer-A", last_update=None, tagged=False),
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
        TD, SERVER, "bundle-acme-a.b+c", last_update=None, extra_tags={"spire-protect": "true"}
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
    arn = aws.spire_key(TD, SERVER, "x509-CA-A", last_update=1, created_at=created)
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
    arn = aws.spire_key(TD, SERVER, "JWT-Signer-A", last_update=1)
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
    aws.spire_key(TD, SERVER, "x509-CA-A", last_update=1)
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
    arn = aws.spire_key(TD, SERVER, "x509-CA-A", last_update=2)
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
    arn = aws.spire_key(TD, SERVER, "x509-CA-B", last_update=1)

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
    arn = aws.spire_key(TD, SERVER, "x509-CA-A", last_update=1)

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


# ------------------------------------------------------------------ ListAliases / ListKeys paging


async def alias_pages(kms: Any, **params: Any) -> list[dict[str, Any]]:
    """Every ListAliases answer, following NextMarker by hand (no paginator in the way)."""
    pages: list[dict[str, Any]] = []
    while True:
        page = await kms.list_aliases(**params)
        pages.append(page)
        if not page["Truncated"]:
            return pages
        params["Marker"] = page["NextMarker"]


def every_alias(aws: Emulator) -> dict[str, str]:
    """What one unpaged ListAliases answers: moto's aliases plus the reserved alias/aws/* ones."""
    listed = {name: str(key.id) for key in list(aws.backend.keys.values()) for name in key.aliases}
    return {**RESERVED_ALIASE_TARGET_KEY_IDS, **listed}


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


async def test_list_aliases_pages_by_limit(aws: Emulator, clients: Clients) -> None:
    aws.foreign_keys(120, aliases_every=1)
    truth = every_alias(aws)
    assert len(truth) == 120 + len(RESERVED_ALIASE_TARGET_KEY_IDS)

    pages = await alias_pages(clients.kms, Limit=100)

    assert [len(p["Aliases"]) for p in pages] == [100, len(truth) - 100]
    first, last = pages
    assert first["Truncated"] is True
    assert isinstance(first["NextMarker"], str) and first["NextMarker"]
    assert last["Truncated"] is False
    assert "NextMarker" not in last
    names = [a["AliasName"] for p in pages for a in p["Aliases"]]
    assert names == sorted(names)  # a stable order, no repeats
    assert {a["AliasName"]: a["TargetKeyId"] for p in pages for a in p["Aliases"]} == truth
    assert all(a["AliasArn"].endswith(a["AliasName"]) for p in pages for a in p["Aliases"])


async def test_list_aliases_default_limit_is_50(aws: Emulator, clients: Clients) -> None:
    aws.foreign_keys(120, aliases_every=1)
    total = len(every_alias(aws))

    page = await clients.kms.list_aliases()
    assert len(page["Aliases"]) == 50
    assert page["Truncated"] is True

    sizes = [len(p["Aliases"]) async for p in clients.kms.get_paginator("list_aliases").paginate()]
    assert sizes == [50, 50, total - 100]
    assert set(await all_aliases(clients.kms)) == set(every_alias(aws))


async def test_small_account_lists_in_one_untruncated_page(aws: Emulator, clients: Clients) -> None:
    aws.foreign_keys(5, aliases_every=1)

    page = await clients.kms.list_aliases(Limit=100)

    assert page["Truncated"] is False
    assert "NextMarker" not in page
    assert {a["AliasName"] for a in page["Aliases"]} == set(every_alias(aws))
    keys = await clients.kms.list_keys(Limit=1000)
    assert keys["Truncated"] is False
    assert "NextMarker" not in keys
    assert {k["KeyArn"] for k in keys["Keys"]} == set(aws.all_keys())


async def test_list_aliases_by_key_id_pages_too(aws: Emulator, clients: Clients) -> None:
    arn = aws.create_key()
    mine = [f"alias/mine-{i}" for i in range(5)]
    for name in mine:
        aws.create_alias(name, arn)
    aws.foreign_keys(60, aliases_every=1)  # other keys' aliases stay out of the listing

    whole = await clients.kms.list_aliases(KeyId=key_id_of(arn))
    assert [a["AliasName"] for a in whole["Aliases"]] == mine
    assert whole["Truncated"] is False
    assert {a["TargetKeyId"] for a in whole["Aliases"]} == {key_id_of(arn)}

    pages = await alias_pages(clients.kms, KeyId=arn, Limit=2)
    assert [[a["AliasName"] for a in p["Aliases"]] for p in pages] == [
        mine[:2],
        mine[2:4],
        mine[4:],
    ]
    assert [p["Truncated"] for p in pages] == [True, True, False]

    with pytest.raises(ClientError) as unknown:  # moto's own check still answers first
        await clients.kms.list_aliases(KeyId="00000000-0000-0000-0000-000000000000", Limit=2)
    assert error_code(unknown) == "NotFoundException"


async def test_alias_marker_survives_changes_between_pages(aws: Emulator, clients: Clients) -> None:
    aws.foreign_keys(30, aliases_every=1)
    arn = aws.create_key()
    before = set(every_alias(aws))

    first = await clients.kms.list_aliases(Limit=20)  # the 14 reserved aliases, then alias/team-*
    seen = [a["AliasName"] for a in first["Aliases"]]
    # Between two pages: an alias sorting before the marker appears, one already listed goes.
    await clients.kms.create_alias(AliasName="alias/0-new", TargetKeyId=key_id_of(arn))
    await clients.kms.delete_alias(AliasName=seen[-2])
    rest = await alias_pages(clients.kms, Limit=20, Marker=first["NextMarker"])

    later = [a["AliasName"] for p in rest for a in p["Aliases"]]
    assert seen[-2].startswith("alias/team-")
    assert not set(later) & set(seen)
    assert set(seen) | set(later) == before


async def test_list_keys_pages_by_limit(aws: Emulator, clients: Clients) -> None:
    arns = [aws.create_key() for _ in range(25)]

    pages = []
    params: dict[str, Any] = {"Limit": 10}
    while True:
        page = await clients.kms.list_keys(**params)
        pages.append(page)
        if not page["Truncated"]:
            break
        assert isinstance(page["NextMarker"], str) and page["NextMarker"]
        params["Marker"] = page["NextMarker"]

    assert [len(p["Keys"]) for p in pages] == [10, 10, 5]
    assert [p["Truncated"] for p in pages] == [True, True, False]
    assert "NextMarker" not in pages[-1]
    listed = [k["KeyArn"] for p in pages for k in p["Keys"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(arns)
    assert all(k["KeyArn"].endswith(k["KeyId"]) for p in pages for k in p["Keys"])


async def test_list_keys_default_limit_is_100(aws: Emulator, clients: Clients) -> None:
    aws.foreign_keys(150, aliases_every=0)

    page = await clients.kms.list_keys()
    assert len(page["Keys"]) == 100
    assert page["Truncated"] is True

    sizes = [len(p["Keys"]) async for p in clients.kms.get_paginator("list_keys").paginate()]
    assert sizes == [100, 50]
    whole = await clients.kms.list_keys(Limit=1000)
    assert whole["Truncated"] is False
    assert {k["KeyArn"] for k in whole["Keys"]} == set(aws.all_keys())


async def test_list_limits_out_of_range_are_validation_errors(
    aws: Emulator, clients: Clients
) -> None:
    aws.create_key()
    for call, limit in (
        (clients.kms.list_aliases, 101),
        (clients.kms.list_keys, 1001),
    ):
        with pytest.raises(ClientError) as refused:
            await call(Limit=limit)
        assert error_code(refused) == "ValidationException"
        assert "less than or equal to" in str(refused.value)

    # botocore refuses Limit=0 itself; without its validation the emulator must refuse it.
    session = aioboto3.Session()
    async with session.client("kms", config=AioConfig(parameter_validation=False)) as raw:
        for operation in ("list_aliases", "list_keys"):
            with pytest.raises(ClientError) as zero:
                await getattr(raw, operation)(Limit=0)
            assert error_code(zero) == "ValidationException"
            assert "greater than or equal to 1" in str(zero.value)


async def test_unknown_markers_are_invalid_marker_errors(aws: Emulator, clients: Clients) -> None:
    aws.foreign_keys(3, aliases_every=1)
    key_marker = (await clients.kms.list_keys(Limit=1))["NextMarker"]
    alias_marker = (await clients.kms.list_aliases(Limit=1))["NextMarker"]

    for call, marker in (
        (clients.kms.list_aliases, "not a marker"),
        (clients.kms.list_aliases, key_marker),  # another operation's marker
        (clients.kms.list_keys, "bm90IGEga2V5IGlk!"),
        (clients.kms.list_keys, alias_marker),
    ):
        with pytest.raises(ClientError) as refused:
            await call(Marker=marker)
        assert error_code(refused) == "InvalidMarkerException"


def test_kms_list_paging_patch_is_idempotent() -> None:
    patched = (KmsResponse.list_aliases, KmsResponse.list_keys)
    _pages_kms_lists()
    assert (KmsResponse.list_aliases, KmsResponse.list_keys) == patched
    assert all(getattr(method, "_pages_like_aws", False) for method in patched)


# ------------------------------------------------------------------ what a real SPIRE server needs


@pytest.mark.parametrize(
    ("key_spec", "algorithm"),
    [
        ("ECC_NIST_P256", "ECDSA_SHA_256"),
        ("ECC_NIST_P384", "ECDSA_SHA_384"),
        ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256"),
        ("RSA_2048", "RSASSA_PSS_SHA_256"),
        ("RSA_4096", "RSASSA_PKCS1_V1_5_SHA_512"),
    ],
)
async def test_sign_with_message_type_digest_signs_the_digest(
    aws: Emulator, clients: Clients, key_spec: str, algorithm: str
) -> None:
    # SPIRE signs digests (Go's crypto.Signer) and Go's x509.CreateCertificate checks the
    # signature it gets: a signature over the digest's digest (moto's own) fails it.
    created = await clients.kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec=key_spec)
    key_id = created["KeyMetadata"]["KeyId"]
    hashing: dict[str, hashes.HashAlgorithm] = {
        "256": hashes.SHA256(),
        "384": hashes.SHA384(),
        "512": hashes.SHA512(),
    }
    hash_algorithm = hashing[algorithm[-3:]]
    digester = hashes.Hash(hash_algorithm)
    digester.update(b"to be signed")
    digest = digester.finalize()

    signed = await clients.kms.sign(
        KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm=algorithm
    )

    der = (await clients.kms.get_public_key(KeyId=key_id))["PublicKey"]
    public = serialization.load_der_public_key(der)
    prehashed = asym_utils.Prehashed(hash_algorithm)
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signed["Signature"], digest, ec.ECDSA(prehashed))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=hash_algorithm.digest_size)
            if "PSS" in algorithm
            else padding.PKCS1v15()
        )
        public.verify(signed["Signature"], digest, pad, prehashed)
    # RAW messages are hashed, as before
    raw = await clients.kms.sign(KeyId=key_id, Message=b"to be signed", SigningAlgorithm=algorithm)
    assert raw["Signature"]


async def test_sign_refuses_a_digest_of_the_wrong_length(aws: Emulator, clients: Clients) -> None:
    created = await clients.kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")
    with pytest.raises(ClientError) as caught:
        await clients.kms.sign(
            KeyId=created["KeyMetadata"]["KeyId"],
            Message=b"x" * 20,
            MessageType="DIGEST",
            SigningAlgorithm="ECDSA_SHA_256",
        )
    assert caught.value.response["Error"]["Code"] == "ValidationException"


async def test_create_key_without_multi_region_makes_a_single_region_key(
    aws: Emulator, clients: Clients
) -> None:
    created = await clients.kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")
    described = await clients.kms.describe_key(KeyId=created["KeyMetadata"]["KeyId"])
    assert described["KeyMetadata"]["MultiRegion"] is False
