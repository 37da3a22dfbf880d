"""A real SPIRE server (spire-server, built from SPIRE's Go module at the versions
devtools/spireserver/go.mod and devtools/spireserver/v1.13.3/go.mod pin: v1.15.3 in alias and tag
mode, v1.13.3 in alias mode) and the daemon on one emulated account: the scenarios of
devtools/interop.py, each judged on AWS's end state and on SPIRE's own view (its health check,
the public keys of the bundle it serves, its log).

The binary is built into .cache/spire/<version>/ when absent (Go and the module proxy needed;
several minutes cold); without Go the tests skip and say why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from devtools import interop, spireserver
from devtools.interop import Account, Row

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spire_binary() -> Path:
    try:
        return spireserver.binary()
    except spireserver.NoSpire as exc:
        pytest.skip(f"no spire-server here: {exc}")


@pytest.fixture
def account(spire_binary: Path) -> Iterator[Account]:
    with interop.account() as acc:
        yield acc


def clean(row: Row) -> None:
    assert row.ok, "\n".join(row.problems + row.notes)
    assert row.wrongly_touched == 0
    assert row.reverted == 0


@pytest.mark.parametrize(
    ("tag_mode", "key_type"),
    [(False, "ec-p256"), (True, "ec-p256"), (False, "rsa-2048")],
    ids=["alias", "tag", "alias-rsa"],
)
def test_spire_restarts_on_the_keys_the_daemon_adopted(
    account: Account, tag_mode: bool, key_type: str
) -> None:
    row = interop.adopt(account, tag_mode=tag_mode, key_type=key_type)
    clean(row)
    assert row.created == 2  # its first X.509 CA and JWT keys, and none after the restart


def test_a_rotating_spire_server_beside_refreshing_daemons(account: Account) -> None:
    # SPIRE rotates every few seconds while two daemons refresh its aliases back to back. What
    # is judged: no key SPIRE uses is touched, SPIRE stays healthy, and it really rotates. How
    # often a refresh still meets a rotation within its last round trip is measured (the row's
    # reverted count); tests/test_reliability.py pins the re-read that bounds it.
    row = interop.rotation(account, seconds=45, ca_ttl="12s")
    assert row.ok, "\n".join(row.problems + row.notes)
    assert row.wrongly_touched == 0
    assert row.rotations >= 3  # UpdateAlias by SPIRE onto a new key, each one a chance to lose
    assert row.reverted <= row.rotations


@pytest.mark.parametrize(
    "modes", [[False], [True], [False, True]], ids=["alias", "tag", "alias+tag"]
)
def test_reclaim_never_touches_a_running_spire_server(account: Account, modes: list[bool]) -> None:
    row = interop.live_servers(account, modes=modes)
    clean(row)
    assert row.created == 2 * len(modes)


def test_a_spire_server_stopped_for_good(account: Account) -> None:
    row = interop.stopped_for_good(account)
    clean(row)


def test_the_judge_sees_a_wrongly_touched_key(account: Account) -> None:
    # a key a running SPIRE server uses, scheduled for deletion by the daemon's hand, is counted
    server = account.spire("judge")
    server.start()
    interop._wait_for(lambda: len(account.aliases_of(server)) >= 2, 30)
    (alias, key_id), (_, other) = sorted(account.aliases_of(server).items())
    kms = boto3.client("kms", endpoint_url=account.proxy.endpoint_url, region_name="us-east-1")
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert account.wrongly_touched() == [key_id]
    # and an alias moved off the key SPIRE put it on is a revert, seen in AWS's state and in
    # the order of the calls (any client but the Go SDK counts as a daemon)
    kms.update_alias(AliasName=alias, TargetKeyId=other)
    assert account.reverted_aliases() == [(alias, other, key_id)]
    assert account.daemon_reverts() == [(alias, other)]


@pytest.fixture(scope="module")
def legacy_binary() -> Path:
    try:
        return spireserver.binary(spireserver.LEGACY)
    except spireserver.NoSpire as exc:
        pytest.skip(f"no spire-server {spireserver.LEGACY} here: {exc}")


def test_an_alias_mode_only_release_restarts_on_the_adopted_keys(
    account: Account, legacy_binary: Path
) -> None:
    # v1.13.3 knows nothing of tags: it lists aliases, and must start on the keys the daemon
    # tagged and stamped, with the same public keys.
    row = interop.adopt(account, tag_mode=False, version=spireserver.LEGACY)
    clean(row)
    assert row.spire == f"{spireserver.LEGACY} alias"
    assert row.created == 2


def test_an_alias_mode_only_release_beside_a_tag_mode_server(
    account: Account, legacy_binary: Path
) -> None:
    row = interop.live_servers(
        account, modes=[False, True], versions=[spireserver.LEGACY, spireserver.VERSION]
    )
    clean(row)
    assert row.spire == f"{spireserver.LEGACY} alias + {spireserver.VERSION} tag"
    assert row.created == 4
