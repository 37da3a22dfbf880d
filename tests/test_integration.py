"""End to end: the CLI against the moto emulator, through the fault proxy, judged by AWS state.

Every test seeds the emulator in-process, runs ``daemon.cli.main`` with a settings file and a key
identifier file in ``tmp_path``, and asserts the final state read back from the emulator (tags,
key state, alias targets), plus, through the proxy's counters, which mutating calls were made.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon import spire
from daemon.cli import main
from devtools.emulator import Emulator
from devtools.faultproxy import FaultProxy
from devtools.spire_health import SpireHealth
from tests.world import DAY, OTHER_TD, PEER, SERVER, TD, ago, tag_only_key

pytestmark = pytest.mark.integration

PEER2 = "5e0c2f4a-1111-4222-8333-444455556666"
ACME = "bundle-acme-foo.bar+rsa"
MUTATING = ("TagResource", "TagResources", "UpdateAlias", "ScheduleKeyDeletion")


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging: None) -> None:
    """Every test here runs the CLI in-process."""


@dataclass
class Cli:
    """Runs the CLI with a settings file pointing at the proxy; ``extra`` adds TOML lines."""

    tmp: Path
    endpoint: str
    capsys: pytest.CaptureFixture[str]
    spire_url: str = ""  # the stand-in SPIRE health listener
    reclaim: dict[str, str] = field(default_factory=dict)
    out: str = ""
    err: str = ""

    def config(self) -> Path:
        keyid = self.tmp / "keyid"
        keyid.write_text(SERVER)
        reclaim = "".join(f"{k} = {v}\n" for k, v in self.reclaim.items())
        path = self.tmp / "config.toml"
        path.write_text(
            f'trust_domain = "{TD}"\n'
            'region = "us-east-1"\n'
            f'key_identifier_file = "{keyid}"\n'
            f'spire_health_url = "{self.spire_url}"\n'
            f"[reclaim]\n{reclaim}"
            "[aws]\n"
            f'endpoint_url = "{self.endpoint}"\n'
            'connect_timeout = "2s"\nread_timeout = "5s"\nmax_attempts = 2\n'
            "mutating_calls_per_second = 50\n"
            '[log]\nformat = "json"\nlevel = "info"\n'
        )
        return path

    def __call__(self, *args: str) -> int:
        self.capsys.readouterr()
        code = main([*args, "--config", str(self.config())])
        self.out, self.err = self.capsys.readouterr()
        return code


@pytest.fixture
def cli(
    tmp_path: Path, proxy: FaultProxy, capsys: pytest.CaptureFixture[str], spire_health: SpireHealth
) -> Cli:
    return Cli(tmp_path, proxy.endpoint_url, capsys, spire_health.url)


def stale_and_live_peer(aws: Emulator) -> str:
    """A dead peer's stale key and a live peer's fresh one (the guard's fraction stays 1/2).

    Returns the stale key's ARN.
    """
    stale = tag_only_key(aws, PEER, "x509-CA-A", 20)
    tag_only_key(aws, PEER2, "x509-CA-A", 1)
    return stale


def key_id_of(arn: str) -> str:
    return arn.split(":key/", 1)[1]


def mutations(proxy: FaultProxy) -> dict[str, int]:
    return {op: proxy.count(op) for op in MUTATING}


NO_MUTATIONS = dict.fromkeys(MUTATING, 0)


# ------------------------------------------------------------------ the full world


@dataclass
class World:
    legacy: str
    serving: str
    superseded: str
    stale_peer: str
    kept: dict[str, str]


def seed_world(emu: Emulator) -> World:
    now = datetime.now(UTC)
    old = now - 90 * DAY
    legacy = emu.spire_key(
        TD, SERVER, ACME, last_update=None, tagged=False, created_at=now - 30 * DAY
    )
    serving = emu.spire_key(
        TD, SERVER, "x509-CA-A", last_update=ago(3 * DAY), created_at=now - 20 * DAY
    )
    superseded = emu.spire_key(
        TD, SERVER, "x509-CA-A", last_update=ago(3 * DAY), alias=False, created_at=now - 40 * DAY
    )
    stale_peer = tag_only_key(emu, PEER, "x509-CA-A", 20)

    def peer(key_id: str, last_update: int | None, **kw: object) -> str:
        params: dict[str, object] = {"alias": False, "created_at": old}
        params.update(kw)
        return emu.spire_key(
            trust_domain=TD,
            server_id=PEER,
            key_id=key_id,
            last_update=last_update,
            **params,  # type: ignore[arg-type]
        )

    kept = {
        "fresh peer": emu.spire_key(
            TD, PEER2, "x509-CA-A", last_update=ago(timedelta(hours=1)), alias=False, created_at=old
        ),
        "other trust domain": emu.spire_key(
            OTHER_TD, PEER, "x509-CA-A", last_update=ago(60 * DAY), alias=False, created_at=old
        ),
        "untagged": emu.create_key(created_at=old),
        "last-update 1.5": peer("JWT-Signer-A", None, extra_tags={"spire-last-update": "1.5"}),
        "last-update 0x10": peer("JWT-Signer-B", None, extra_tags={"spire-last-update": "0x10"}),
        "future": peer("WIT-Signer-A", int((now + 30 * DAY).timestamp())),
        "protected": peer("WIT-Signer-B", ago(30 * DAY), extra_tags={"spire-protect": "true"}),
        "young": peer("x509-CA-B", ago(20 * DAY), created_at=now - 2 * DAY),
        "aliased stale peer": emu.spire_key(
            TD, PEER2, "JWT-Signer-A", last_update=ago(20 * DAY), alias=True, created_at=old
        ),
    }
    emu.foreign_keys(30)
    return World(legacy, serving, superseded, stale_peer, kept)


def test_once_migrates_stamps_reclaims_and_keeps_the_rest(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    world = seed_world(aws)
    superseded_tags = aws.tags(world.superseded)
    kept_tags = {name: aws.tags(arn) for name, arn in world.kept.items()}
    serving_alias = spire.alias_name(TD, SERVER, "x509-CA-A")
    legacy_alias = spire.alias_name(TD, SERVER, ACME)
    assert legacy_alias.endswith("/bundle-acme-foo_2ebar_2brsa")

    code = cli("once")

    assert code == 0, cli.out + cli.err
    now = time.time()
    # Legacy alias-managed key: all five tags, key ID decoded from the alias.
    legacy_tags = aws.tags(world.legacy)
    assert abs(int(legacy_tags[spire.TAG_LAST_UPDATE]) - now) < 60
    assert legacy_tags == spire.spire_tags(TD, SERVER, ACME, int(legacy_tags["spire-last-update"]))
    assert aws.alias_target(legacy_alias) == key_id_of(world.legacy)
    # Serving tagged key: stamped, alias unchanged.
    assert abs(int(aws.tags(world.serving)[spire.TAG_LAST_UPDATE]) - now) < 60
    assert aws.alias_target(serving_alias) == key_id_of(world.serving)
    assert aws.key_state(world.serving) == "Enabled"
    # Superseded key of this server: not stamped, not reclaimed.
    assert aws.tags(world.superseded) == superseded_tags
    assert aws.key_state(world.superseded) == "Enabled"
    # Stale peer: marked, then scheduled for deletion.
    assert aws.key_state(world.stale_peer) == "PendingDeletion"
    assert aws.tags(world.stale_peer)[spire.TAG_ACTIVE] == "false"
    # Everything else untouched.
    for name, arn in world.kept.items():
        assert aws.tags(arn) == kept_tags[name], name
        assert aws.key_state(arn) == "Enabled", name
    assert proxy.count("ScheduleKeyDeletion") == 1
    # Both of this server's aliases are refreshed (UpdateAlias to the same target).
    updates = {(r["AliasName"], r["TargetKeyId"]) for r in proxy.requests("UpdateAlias")}
    assert updates == {
        (serving_alias, key_id_of(world.serving)),
        (legacy_alias, key_id_of(world.legacy)),
    }


def test_dry_run_makes_no_mutating_call(aws: Emulator, proxy: FaultProxy, cli: Cli) -> None:
    world = seed_world(aws)
    arns = [world.legacy, world.serving, world.superseded, world.stale_peer, *world.kept.values()]
    before = {arn: (aws.tags(arn), aws.key_state(arn)) for arn in arns}

    code = cli("once", "--dry-run")

    assert code == 0, cli.out + cli.err
    assert {arn: (aws.tags(arn), aws.key_state(arn)) for arn in arns} == before
    assert mutations(proxy) == NO_MUTATIONS
    assert proxy.count("GetResources") > 0  # it did observe
    assert "dry run: nothing changed" in cli.out
    assert world.stale_peer in cli.out  # the plan is printed


def test_second_once_writes_nothing_new(aws: Emulator, proxy: FaultProxy, cli: Cli) -> None:
    world = seed_world(aws)
    assert cli("once") == 0, cli.out + cli.err
    proxy.reset()
    snapshot = {arn: aws.key_state(arn) for arn in aws.all_keys()}

    code = cli("once")

    assert code == 0, cli.out + cli.err
    # No migration or mark (kms:TagResource), no reclaim; stamps and alias refreshes are expected.
    assert proxy.count("TagResource") == 0
    assert proxy.count("ScheduleKeyDeletion") == 0
    for body in proxy.requests("TagResources"):
        assert body["Tags"].keys() == {spire.TAG_LAST_UPDATE}
        assert set(body["ResourceARNList"]) <= {world.legacy, world.serving}
    assert {arn: aws.key_state(arn) for arn in aws.all_keys()} == snapshot


# ------------------------------------------------------------------ guards


def dead_peer_keys(aws: Emulator, server: str, *key_ids: str, days: int = 20) -> list[str]:
    old = datetime.now(UTC) - 90 * DAY
    return [
        aws.spire_key(TD, server, kid, last_update=ago(days * DAY), alias=False, created_at=old)
        for kid in key_ids
    ]


def test_budget_guard_reclaims_the_stalest_and_holds_the_rest(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    older = dead_peer_keys(aws, PEER, "x509-CA-A", days=30)
    newer = dead_peer_keys(aws, PEER, "JWT-Signer-A", days=20)
    dead_peer_keys(aws, PEER2, "x509-CA-A", days=1)  # a live peer
    cli.reclaim["max_reclaims"] = "1"

    code = cli("once", "--job", "reclaim")

    assert code == 4, cli.out + cli.err
    assert "REFUSED by the budget guard" in cli.out
    assert "reclaiming 1 now (the stalest), holding 1 back" in cli.out
    assert aws.key_state(older[0]) == "PendingDeletion"
    assert aws.key_state(newer[0]) == "Enabled"
    assert proxy.count("ScheduleKeyDeletion") == 1
    # The next run (a retry, or another daemon) sees the budget spent in AWS: nothing more.
    assert cli("once", "--job", "reclaim") == 4
    assert aws.key_state(newer[0]) == "Enabled"
    assert proxy.count("ScheduleKeyDeletion") == 1


def test_blast_radius_guard_refuses_the_whole_run(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    stale = dead_peer_keys(aws, PEER, "x509-CA-A", "JWT-Signer-A")
    stale += dead_peer_keys(aws, "5e0c2f4a-9999-4222-8333-444455556666", "x509-CA-A")
    dead_peer_keys(aws, PEER2, "x509-CA-A", "JWT-Signer-A", "x509-CA-B", "JWT-Signer-B", days=1)
    before = {arn: aws.tags(arn) for arn in stale}

    code = cli("once", "--job", "reclaim")

    assert code == 4, cli.out + cli.err
    assert "REFUSED by the blast_radius guard" in cli.out
    assert "2 of the trust domain's 2 servers" not in cli.out
    assert "2 of the trust domain's 3 servers" in cli.out
    for arn in stale:
        assert aws.key_state(arn) == "Enabled"
        assert aws.tags(arn) == before[arn]
    assert mutations(proxy) == NO_MUTATIONS


def test_clock_guard_refuses_when_aws_clock_disagrees(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    stale = tag_only_key(aws, PEER, "x509-CA-A", 20)
    for kid in ("x509-CA-A", "JWT-Signer-A", "x509-CA-B"):
        tag_only_key(aws, PEER2, kid, 1)
    before = aws.tags(stale)
    aws.clock_skew = timedelta(days=15)

    code = cli("once", "--job", "reclaim")

    assert code == 4, cli.out + cli.err
    assert "REFUSED" in cli.out
    assert "clock" in cli.out
    assert aws.key_state(stale) == "Enabled"
    assert aws.tags(stale) == before
    assert mutations(proxy) == NO_MUTATIONS


# ------------------------------------------------------------------ interrupted and done reclaims


def test_interrupted_reclaim_is_completed(aws: Emulator, proxy: FaultProxy, cli: Cli) -> None:
    marked = tag_only_key(
        aws,
        PEER,
        "x509-CA-A",
        20,
        active="false",
        extra_tags={spire.TAG_MARKED_AT: str(ago(timedelta(hours=1)))},
    )
    unmarked = tag_only_key(aws, PEER, "JWT-Signer-A", 20, active="false")
    tag_only_key(aws, PEER2, "x509-CA-A", 1)

    code = cli("once", "--job", "reclaim")

    assert code == 0, cli.out + cli.err
    assert aws.key_state(marked) == "PendingDeletion"
    assert aws.tags(marked)[spire.TAG_ACTIVE] == "false"
    assert proxy.count("ScheduleKeyDeletion") == 1
    # Marked false by someone else (no mark of the daemon's): left alone.
    assert aws.key_state(unmarked) == "Enabled"
    assert "inactive_unmarked" in cli.out
    assert proxy.count("TagResource") == 0  # already marked: no second tag


def test_key_already_pending_deletion_is_left_alone(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    pending = tag_only_key(aws, PEER, "x509-CA-A", 20, active="false")
    aws.backend.schedule_key_deletion(key_id_of(pending), 7)
    tag_only_key(aws, PEER2, "x509-CA-A", 1)
    before = aws.tags(pending)

    code = cli("once", "--job", "reclaim")

    assert code == 0, cli.out + cli.err
    assert aws.key_state(pending) == "PendingDeletion"
    assert aws.tags(pending) == before
    assert mutations(proxy) == NO_MUTATIONS


# ------------------------------------------------------------------ output streams


def test_keys_json_is_valid_json_on_stdout(aws: Emulator, proxy: FaultProxy, cli: Cli) -> None:
    world = seed_world(aws)

    code = cli("keys", "--output", "json")

    assert code == 0, cli.out + cli.err
    rows = json.loads(cli.out)
    assert isinstance(rows, list)
    for row in rows:
        assert {"key_arn", "server_id", "spire_key_id", "key_state", "last_update", "verdict"} <= (
            row.keys()
        )
    by_arn = {row["key_arn"]: row for row in rows}
    assert by_arn[world.stale_peer]["verdict"] == "stale"
    assert by_arn[world.stale_peer]["server_id"] == PEER
    assert by_arn[world.stale_peer]["spire_key_id"] == "x509-CA-A"
    assert by_arn[world.stale_peer]["key_state"] == "Enabled"
    assert by_arn[world.kept["protected"]]["verdict"] == "protected"
    assert by_arn[world.kept["last-update 1.5"]]["verdict"] == "malformed"
    assert by_arn[world.kept["future"]]["verdict"] == "future"
    assert by_arn[world.kept["young"]]["verdict"] == "young"
    assert by_arn[world.kept["aliased stale peer"]]["verdict"] == "alias_fresh"
    assert world.kept["other trust domain"] not in by_arn
    assert world.kept["untagged"] not in by_arn
    assert by_arn[world.legacy]["verdict"] == "legacy"  # untagged: found through its alias
    assert by_arn[world.serving]["verdict"] == "serving"
    assert mutations(proxy) == NO_MUTATIONS


def test_keys_shows_an_alias_that_would_stop_spire_from_starting(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    # This server was reclaimed while it was away: its key is pending deletion and marked
    # inactive, and its alias (never deleted by the daemon) still resolves to it. SPIRE's start
    # fails on such an alias with "found disabled SPIRE key" (docs/operations.md).
    old = datetime.now(UTC) - timedelta(days=120)
    pending = aws.spire_key(
        TD, SERVER, "x509-CA-A", last_update=ago(20 * DAY), active="false", created_at=old
    )
    aws.backend.schedule_key_deletion(key_id_of(pending), 7)

    for output in ("json", "table"):
        code = cli("keys", "--output", output)
        assert code == 0, cli.out + cli.err
        if output == "json":
            (row,) = [r for r in json.loads(cli.out) if r["key_arn"] == pending]
            assert row["key_state"] == "PendingDeletion"
            (finding,) = row["findings"]
            assert finding["anomaly"] == "alias_to_disabled_key"
            assert spire.alias_name(TD, SERVER, "x509-CA-A") in finding["detail"]
            assert "found disabled SPIRE key" in finding["detail"]
        else:
            (line,) = [x for x in cli.out.splitlines() if x.startswith("finding")]
            assert "alias_to_disabled_key" in line and pending in line
    assert mutations(proxy) == NO_MUTATIONS


def test_log_events_go_to_stderr_not_stdout(aws: Emulator, proxy: FaultProxy, cli: Cli) -> None:
    seed_world(aws)

    assert cli("once") == 0, cli.out + cli.err

    events = [json.loads(line)["event"] for line in cli.err.splitlines() if line.startswith("{")]
    assert "refresh_finished" in events
    assert "reclaim_finished" in events
    for line in cli.out.splitlines():
        assert '"event"' not in line, line
    assert cli.out.startswith("refresh: success")


# ------------------------------------------------------------------ more reclaim rules


def test_own_stale_keys_newest_serves_older_is_reclaimed(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    # No alias (tag-mode server whose refresh stopped): the newest enabled key serves.
    now = datetime.now(UTC)
    older = tag_only_key(aws, SERVER, "JWT-Signer-A", 30)
    newest = tag_only_key(aws, SERVER, "JWT-Signer-A", 20, created_at=now - 60 * DAY)
    for kid in ("x509-CA-A", "x509-CA-B", "JWT-Signer-B"):
        tag_only_key(aws, PEER2, kid, 1)
    newest_tags = aws.tags(newest)

    code = cli("once", "--job", "reclaim")

    assert code == 0, cli.out + cli.err
    assert aws.key_state(newest) == "Enabled"
    assert aws.tags(newest) == newest_tags
    assert aws.key_state(older) == "PendingDeletion"
    assert aws.tags(older)[spire.TAG_ACTIVE] == "false"


def test_fraction_counts_servers_not_keys(aws: Emulator, proxy: FaultProxy, cli: Cli) -> None:
    stale = dead_peer_keys(aws, PEER, "x509-CA-A", "JWT-Signer-A", "x509-CA-B")
    dead_peer_keys(aws, PEER2, "x509-CA-A", days=1)
    cli.reclaim["max_reclaim_fraction"] = "0.5"  # 3 of 4 keys, but 1 of 2 servers

    assert cli("once", "--job", "reclaim") == 0, cli.out + cli.err
    assert all(aws.key_state(arn) == "PendingDeletion" for arn in stale)


def test_completing_interrupted_reclaims_counts_toward_the_budget(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    marks = [
        tag_only_key(
            aws,
            PEER,
            kid,
            20,
            active="false",
            extra_tags={spire.TAG_MARKED_AT: str(ago(timedelta(hours=hours)))},
        )
        for kid, hours in (("x509-CA-A", 2), ("JWT-Signer-A", 1))
    ]
    dead_peer_keys(aws, PEER2, "x509-CA-A", days=1)
    cli.reclaim["max_reclaims"] = "1"

    assert cli("once", "--job", "reclaim") == 4, cli.out + cli.err
    assert aws.key_state(marks[0]) == "PendingDeletion"  # the older mark first
    assert aws.key_state(marks[1]) == "Enabled"


def test_pending_window_days_is_passed_to_schedule_key_deletion(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    stale = tag_only_key(aws, PEER, "x509-CA-A", None)
    tag_only_key(aws, PEER2, "x509-CA-A", 1)
    cli.reclaim["pending_window_days"] = "10"

    assert cli("once", "--job", "reclaim") == 0, cli.out + cli.err

    assert aws.key_state(stale) == "PendingDeletion"  # a missing spire-last-update is stale
    [request] = proxy.requests("ScheduleKeyDeletion")
    assert request == {"KeyId": key_id_of(stale), "PendingWindowInDays": 10}


def test_key_scheduled_by_someone_else_meanwhile_counts_as_done(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    stale = stale_and_live_peer(aws)
    # A SPIRE server schedules the key's deletion just before we do; KMS then refuses ours.
    proxy.before(
        "ScheduleKeyDeletion", lambda body: aws.backend.schedule_key_deletion(body["KeyId"], 7)
    )
    proxy.invalid_state("ScheduleKeyDeletion")

    code = cli("once", "--job", "reclaim")

    assert code == 0, cli.out + cli.err
    assert aws.key_state(stale) == "PendingDeletion"
    assert "success  schedule_deletion" in cli.out


def test_failed_deletion_exits_1_and_the_next_run_completes_it(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    stale = stale_and_live_peer(aws)
    proxy.server_error("ScheduleKeyDeletion")

    assert cli("once", "--job", "reclaim") == 1, cli.out + cli.err
    assert aws.key_state(stale) == "Enabled"
    assert aws.tags(stale)[spire.TAG_ACTIVE] == "false"  # marked: an interrupted reclaim

    proxy.reset()
    assert cli("once", "--job", "reclaim") == 0, cli.out + cli.err
    assert aws.key_state(stale) == "PendingDeletion"
    assert proxy.count("TagResource") == 0
    assert proxy.count("ScheduleKeyDeletion") == 1


def test_restored_key_is_not_deleted_again(aws: Emulator, proxy: FaultProxy, cli: Cli) -> None:
    # CancelKeyDeletion leaves the key Disabled with spire-active=false.
    restored = tag_only_key(aws, PEER, "x509-CA-A", 20, active="false")
    aws.backend.schedule_key_deletion(key_id_of(restored), 7)
    aws.backend.cancel_key_deletion(key_id_of(restored))
    assert aws.key_state(restored) == "Disabled"

    assert cli("once", "--job", "reclaim") == 0, cli.out + cli.err

    assert aws.key_state(restored) == "Disabled"
    assert mutations(proxy) == NO_MUTATIONS


def test_key_whose_state_cannot_be_read_is_kept(aws: Emulator, proxy: FaultProxy, cli: Cli) -> None:
    stale = tag_only_key(aws, PEER, "x509-CA-A", 20)
    proxy.throttle("DescribeKey")

    code = cli("once", "--job", "reclaim")

    assert code == 1, cli.out + cli.err
    assert aws.key_state(stale) == "Enabled"
    assert mutations(proxy) == NO_MUTATIONS
    assert "read error" in cli.out


def test_dry_run_setting_makes_no_mutating_call(
    aws: Emulator, proxy: FaultProxy, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = seed_world(aws)
    monkeypatch.setenv("SPIRE_KMS_RECONCILER_DRY_RUN", "true")

    assert cli("once") == 0, cli.out + cli.err

    assert mutations(proxy) == NO_MUTATIONS
    assert aws.key_state(world.stale_peer) == "Enabled"
    assert spire.TAG_SERVER_ID not in aws.tags(world.legacy)


def test_a_peers_legacy_key_is_neither_migrated_nor_reclaimed(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    # A legacy key of a peer in alias mode: no tags, so reclaim never sees it (tag discovery).
    legacy_peer = aws.spire_key(
        TD,
        PEER,
        "x509-CA-A",
        last_update=None,
        tagged=False,
        created_at=datetime.now(UTC) - 90 * DAY,
    )
    own = aws.spire_key(TD, SERVER, "x509-CA-A", last_update=ago(DAY), alias=False)

    assert cli("once") == 0, cli.out + cli.err

    assert aws.tags(legacy_peer) == {}
    assert aws.key_state(legacy_peer) == "Enabled"
    assert mutations(proxy)["TagResource"] == 0
    assert int(aws.tags(own)[spire.TAG_LAST_UPDATE]) > ago(timedelta(minutes=5))


def test_aliases_of_a_prefix_trust_domain_are_not_ours(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    # example_org is a prefix of example_org2: ownership needs the trailing slash.
    theirs = aws.spire_key("example.org2", SERVER, "x509-CA-A", last_update=None, tagged=False)
    assert aws.alias_target(spire.alias_name("example.org2", SERVER, "x509-CA-A"))

    # Nothing of this server's is found, and that is a failure, not a quiet success.
    assert cli("once", "--job", "refresh") == 1, cli.out + cli.err
    assert "no key of this server found" in cli.out

    assert aws.tags(theirs) == {}
    assert mutations(proxy) == NO_MUTATIONS


@pytest.mark.parametrize(
    ("offset", "state"),
    [(timedelta(0), "PendingDeletion"), (timedelta(minutes=2), "Enabled")],
    ids=["exactly-stale_after-is-stale", "just-inside-is-fresh"],
)
def test_stale_after_boundary(
    aws: Emulator, proxy: FaultProxy, cli: Cli, offset: timedelta, state: str
) -> None:
    old = datetime.now(UTC) - 90 * DAY
    key = aws.spire_key(
        TD, PEER, "x509-CA-A", last_update=ago(14 * DAY - offset), alias=False, created_at=old
    )
    tag_only_key(aws, PEER2, "x509-CA-A", 1)

    assert cli("once", "--job", "reclaim") == 0, cli.out + cli.err

    assert aws.key_state(key) == state


def test_small_clock_skew_within_tolerance_does_not_refuse(
    aws: Emulator, proxy: FaultProxy, cli: Cli
) -> None:
    stale = stale_and_live_peer(aws)
    aws.clock_skew = timedelta(minutes=2)

    assert cli("once", "--job", "reclaim") == 0, cli.out + cli.err

    assert aws.key_state(stale) == "PendingDeletion"


def test_denied_schedule_key_deletion_exits_3(aws: Emulator, proxy: FaultProxy, cli: Cli) -> None:
    stale = stale_and_live_peer(aws)
    proxy.deny("ScheduleKeyDeletion")

    code = cli("once", "--job", "reclaim")

    assert aws.key_state(stale) == "Enabled"
    assert "kms:ScheduleKeyDeletion" in cli.out
    assert code == 3, cli.out + cli.err
