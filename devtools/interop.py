"""``make interop``: real SPIRE servers and the daemon on one (emulated) AWS account.

Every scenario starts ``spire-server`` (:mod:`devtools.spireserver`, built from SPIRE's Go module
at the pinned version) with its ``aws_kms`` KeyManager pointed at the fault proxy in front of the
emulator, and runs the daemon beside it, reading the same ``server.conf`` and key identifier file
(``spire_server_config``) and asking the same health listener whether SPIRE is alive. Each one
judges the end state in AWS and in SPIRE's own view: its health check, the public keys of the
bundle it serves, its log. ``tests/test_interop.py`` asserts on the same functions.

Columns: the scenario; SPIRE's version and mode(s); daemon runs; keys SPIRE created; keys wrongly
touched (a mutating call of the daemon on a key a running SPIRE server still uses, or such a key
not Enabled and active at the end); aliases reverted (a SPIRE alias left pointing at a key SPIRE
had moved it away from). Exit status 0 when every row is clean.

    python -m devtools.interop [--only rotation] [--seconds 90]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from daemon import spire
from devtools.emulator import Emulator
from devtools.faultproxy import FaultProxy, key_id_of
from devtools.scenarios import Run, aws_environment, run_in_process, toml_value
from devtools.spireserver import LEGACY, REPO, VERSION, SpireServer

DAY = timedelta(days=1)
TD = "example.org"
#: Tag writes and key deletions: what the daemon must never aim at a key SPIRE still uses.
HARMFUL = ("TagResource", "TagResources", "ScheduleKeyDeletion", "UntagResource", "DisableKey")


SWEEP_NOTE = """
Not run: SPIRE's own alias-mode sweeps (disposeAliases every 24 h, disposeKeys every 48 h). They
first fire one period after the server starts, on Go tickers, and nothing at start-up drives them;
libfaketime does not move a Go program's clock (Go reads it through the vDSO: spire-server under
faketime "+10d x1000" logs the real time). What they read is checked instead: the daemon never
deletes an alias, and it keeps every running server's aliases' LastUpdatedDate fresh."""


def is_spire(agent: str) -> bool:
    """Whether a request came from a SPIRE server (the Go SDK), not from the daemon."""
    return "aws-sdk-go" in agent


@dataclass
class Row:
    """One scenario's figures and what went wrong in it."""

    scenario: str
    spire: str
    runs: int = 0
    created: int = 0
    wrongly_touched: int = 0
    reverted: int = 0
    rotations: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Whether a reverted alias fails the row. The rotation row measures how often the one
    #: round trip left between the re-read and UpdateAlias meets a rotation: it reports.
    judge_reverts: bool = True

    @property
    def ok(self) -> bool:
        reverts_ok = self.reverted == 0 or not self.judge_reverts
        return not self.problems and self.wrongly_touched == 0 and reverts_ok

    @property
    def reverted_text(self) -> str:
        if self.judge_reverts:
            return str(self.reverted)
        return f"{self.reverted} of {self.rotations} rotations (measured)"

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


class Account:
    """The emulator, the proxy in front of it, the SPIRE servers on it and their daemons."""

    def __init__(self, emulator: Emulator, proxy: FaultProxy, workdir: Path) -> None:
        self.emulator = emulator
        self.proxy = proxy
        self.workdir = workdir
        self.servers: list[SpireServer] = []
        self.runs = 0
        self._configs = 0
        #: Keys of servers declared dead: the daemon may reclaim them.
        self.dead: set[str] = set()

    # ------------------------------------------------------------------ SPIRE servers

    def spire(
        self,
        name: str,
        *,
        tag_mode: bool = False,
        ca_ttl: str = "10m",
        key_type: str = "ec-p256",
        version: str = VERSION,
    ) -> SpireServer:
        server = SpireServer(
            self.workdir / name,
            self.proxy.endpoint_url,
            trust_domain=TD,
            tag_mode=tag_mode,
            ca_ttl=ca_ttl,
            key_type=key_type,
            version=version,
        )
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()

    # ------------------------------------------------------------------ the daemon

    def config(self, server: SpireServer, reclaim: Mapping[str, Any] | None = None) -> Path:
        self._configs += 1
        settings = {"max_reclaims": 50, "max_reclaim_fraction": 1.0, **(reclaim or {})}
        lines = [
            f'spire_server_config = "{server.config}"',
            "[reclaim]",
            *(f"{k} = {toml_value(v)}" for k, v in settings.items()),
            "[aws]",
            f'endpoint_url = "{self.proxy.endpoint_url}"',
            'connect_timeout = "2s"',
            'read_timeout = "15s"',
            "mutating_calls_per_second = 50",
            "[log]",
            'format = "json"',
            'level = "info"',
        ]
        path = self.workdir / f"daemon-{self._configs}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def spawn(self, server: SpireServer, *args: str, **reclaim: Any) -> subprocess.Popen[str]:
        """``python -m daemon <args>`` beside ``server``, as a process of its own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPIRE_KMS_RECONCILER_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        self.runs += 1
        return subprocess.Popen(
            [sys.executable, "-m", "daemon", *args, "--config", str(self.config(server, reclaim))],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def daemon(self, server: SpireServer, *args: str, **reclaim: Any) -> Run:
        """``spire-kms-reconciler <args>`` beside ``server``, in this process."""
        self.runs += 1
        return run_in_process([*args, "--config", str(self.config(server, reclaim))])

    # ------------------------------------------------------------------ what AWS holds

    def spire_keys(self) -> list[str]:
        """ARNs of every key a SPIRE server created, in creation order."""
        keys = [
            k
            for k in self.emulator.backend.keys.values()
            if k.description.startswith(spire.DESCRIPTION_ROOT)
        ]
        keys.sort(key=lambda k: k.creation_date)
        return [str(k.arn) for k in keys]

    def aliases_of(self, server: SpireServer) -> dict[str, str]:
        """The server's alias names and the key IDs they resolve to."""
        prefix = spire.alias_prefix(TD, server.server_id)
        found = {}
        for key in list(self.emulator.backend.keys.values()):
            for alias in key.aliases:
                if alias.startswith(prefix):
                    found[alias] = str(key.id)
        return found

    def disposed_by_spire(self) -> set[str]:
        """Key IDs a SPIRE server scheduled for deletion itself (after a rotation)."""
        return {
            key_id_of(str(e.body.get("KeyId", "")))
            for e in self.proxy.exchanges("ScheduleKeyDeletion")
            if is_spire(e.agent) and e.ok
        }

    def in_use(self) -> set[str]:
        """Key IDs running SPIRE servers still use: every key SPIRE made and did not dispose
        of, except the keys of servers declared dead."""
        disposed = self.disposed_by_spire()
        return {
            key_id_of(arn)
            for arn in self.spire_keys()
            if key_id_of(arn) not in disposed and key_id_of(arn) not in self.dead
        }

    def wrongly_touched(self) -> list[str]:
        """Keys in use that a daemon aimed a harmful call at, or that ended harmed."""
        used = self.in_use()
        wrong: set[str] = set()
        for exchange in self.proxy.exchanges():
            if is_spire(exchange.agent) or exchange.operation not in HARMFUL:
                continue
            if exchange.operation in ("TagResource", "TagResources"):
                tags = _tags_of(exchange.body)
                if tags.get(spire.TAG_ACTIVE) != "false":
                    continue  # a stamp or a migration: keeps the key alive
            for ref in _keys_named(exchange.body):
                if key_id_of(ref) in used:
                    wrong.add(key_id_of(ref))
        for key_id in used:
            if (
                self.emulator.key_state(key_id) != "Enabled"
                or self.emulator.tags(key_id).get(spire.TAG_ACTIVE) == "false"
            ):
                wrong.add(key_id)
        return sorted(wrong)

    def spire_alias_targets(self) -> dict[str, str]:
        """Where each SPIRE server last pointed each of its aliases (CreateAlias, UpdateAlias)."""
        latest: dict[str, str] = {}
        for exchange in self.proxy.exchanges():
            if exchange.operation not in ("CreateAlias", "UpdateAlias"):
                continue
            if not is_spire(exchange.agent) or not exchange.ok:
                continue
            name = str(exchange.body.get("AliasName", ""))
            latest[name] = key_id_of(str(exchange.body.get("TargetKeyId", "")))
        return latest

    def reverted_aliases(self) -> list[tuple[str, str, str]]:
        """SPIRE aliases that resolve now to another key than SPIRE last set: (alias, where it
        points, where SPIRE put it)."""
        found = []
        targets = self.spire_alias_targets()
        for server in self.servers:
            for alias, key_id in self.aliases_of(server).items():
                want = targets.get(alias)
                if want is not None and key_id != want:
                    found.append((alias, key_id, want))
        return found

    def daemon_reverts(self) -> list[tuple[str, str]]:
        """Each revert: an UpdateAlias of a daemon that named another key than the one SPIRE had
        last put the alias on, in the order the proxy received them: (alias, the key it
        named), once per pair."""
        latest: dict[str, str] = {}
        found = []
        for exchange in sorted(self.proxy.exchanges(), key=lambda e: e.index):
            if exchange.operation not in ("CreateAlias", "UpdateAlias") or not exchange.ok:
                continue
            name = str(exchange.body.get("AliasName", ""))
            target = key_id_of(str(exchange.body.get("TargetKeyId", "")))
            if is_spire(exchange.agent):
                latest[name] = target
            elif name in latest and target != latest[name] and (name, target) not in found:
                found.append((name, target))  # a later refresh of the same revert is not new
        return found

    def age(self, server: SpireServer, days: float, *, aliases: bool = True) -> None:
        """Make the server's keys look ``days`` idle: spire-last-update and CreationDate moved
        back and, with ``aliases``, its aliases' LastUpdatedDate as ListAliases reports it
        through the proxy (a running SPIRE server refreshes its aliases every 6 hours, so only
        a stopped one has old aliases)."""
        then = datetime.now(UTC) - timedelta(days=days)
        backend = self.emulator.backend
        for alias, key_id in self.aliases_of(server).items():
            if aliases:
                self.proxy.set_alias_date(alias, then, created=then - 30 * DAY)
            key = backend.keys[key_id]
            key.creation_date = (then - 30 * DAY).timestamp()
            tags = dict(backend.tagger.get_tag_dict_for_resource(key_id))
            if spire.TAG_LAST_UPDATE in tags:
                backend.tag_resource(key_id, {spire.TAG_LAST_UPDATE: str(int(then.timestamp()))})

    def created_by_spire(self, since: int = 0) -> int:
        return sum(
            1 for e in self.proxy.exchanges("CreateKey")[since:] if is_spire(e.agent) and e.ok
        )


def _tags_of(body: Mapping[str, Any]) -> dict[str, str]:
    tags = body.get("Tags")
    if isinstance(tags, dict):
        return {str(k): str(v) for k, v in tags.items()}
    if isinstance(tags, list):
        return {str(t.get("TagKey")): str(t.get("TagValue")) for t in tags if isinstance(t, dict)}
    return {}


def _keys_named(body: Mapping[str, Any]) -> list[str]:
    refs = [str(body["KeyId"])] if "KeyId" in body else []
    refs += [str(a) for a in body.get("ResourceARNList", []) or []]
    return refs


def served_public_keys(bundle: Mapping[str, Any]) -> set[bytes]:
    """The public keys (DER SubjectPublicKeyInfo) of a SPIFFE bundle SPIRE serves: its X.509
    authorities' and its JWT authorities'."""
    found: set[bytes] = set()
    for jwk in bundle.get("keys", []):
        if jwk.get("x5c"):
            cert = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0]))
            public = cert.public_key()
        elif jwk.get("kty") == "EC":
            curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[jwk["crv"]]
            x = int.from_bytes(_b64url(jwk["x"]), "big")
            y = int.from_bytes(_b64url(jwk["y"]), "big")
            public = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        elif jwk.get("kty") == "RSA":
            n = int.from_bytes(_b64url(jwk["n"]), "big")
            e = int.from_bytes(_b64url(jwk["e"]), "big")
            public = rsa.RSAPublicNumbers(e, n).public_key()
        else:
            continue
        found.add(
            public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return found


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def kms_public_keys(emulator: Emulator, key_ids: Iterator[str] | Sequence[str]) -> set[bytes]:
    backend = emulator.backend
    return {bytes(backend.keys[k].private_key.public_key()) for k in key_ids}


# ------------------------------------------------------------------ scenarios


def adopt(
    account: Account, *, tag_mode: bool, key_type: str = "ec-p256", version: str = VERSION
) -> Row:
    """SPIRE makes its keys; the daemon migrates and stamps them; SPIRE restarts on the very
    same keys."""
    server = account.spire("adopt", tag_mode=tag_mode, key_type=key_type, version=version)
    row = Row(
        f"SPIRE's keys ({key_type}) adopted, then SPIRE restarted",
        f"{server.version} {server.mode}",
    )
    server.start()
    _wait_for(lambda: len(account.aliases_of(server)) >= 2, 30)
    before = dict(account.aliases_of(server))
    served = served_public_keys(server.bundle())
    row.check(
        kms_public_keys(account.emulator, list(before.values())) == served,
        "SPIRE's bundle does not hold its KMS keys' public keys",
    )
    run = account.daemon(server, "once")
    row.check(run.code == 0, f"daemon once exited {run.code}: {run.err[-800:]}")
    for alias, key_id in before.items():
        tags = account.emulator.tags(key_id)
        kid = alias.rsplit("/", 1)[1]
        expected = {
            spire.TAG_TRUST_DOMAIN: TD,
            spire.TAG_SERVER_ID: server.server_id,
            spire.TAG_ACTIVE: "true",
            spire.TAG_KEY_ID: kid,
        }
        row.check(
            all(tags.get(k) == v for k, v in expected.items()) and spire.TAG_LAST_UPDATE in tags,
            f"{alias}: not migrated and stamped: {tags}",
        )
    mark = len(account.proxy.exchanges("CreateKey"))
    server.stop()
    server.start()
    _wait_for(server.healthcheck, 30)
    row.check(account.created_by_spire(mark) == 0, "SPIRE created a key after the restart")
    row.check(account.aliases_of(server) == before, "SPIRE's aliases moved after the restart")
    row.check(server.healthcheck(), "spire-server healthcheck fails after the restart")
    row.check(
        served_public_keys(server.bundle()) == served,
        "the bundle's public keys changed across the restart",
    )
    run = account.daemon(server, "once")
    row.check(run.code == 0, f"second daemon once exited {run.code}: {run.err[-800:]}")
    row.created = account.created_by_spire()
    row.wrongly_touched = len(account.wrongly_touched())
    row.reverted = max(len(account.reverted_aliases()), len(account.daemon_reverts()))
    return row


def rotation(
    account: Account, *, seconds: float, tag_mode: bool = False, ca_ttl: str = "30s"
) -> Row:
    """SPIRE rotates every few seconds while the daemon refreshes aliases in a tight loop."""
    server = account.spire("rotation", tag_mode=tag_mode, ca_ttl=ca_ttl)
    row = Row(
        "SPIRE rotating, the daemon refreshing in a loop",
        f"{server.version} {server.mode}",
        judge_reverts=False,
    )
    server.start()
    _wait_for(lambda: len(account.aliases_of(server)) >= 2, 30)
    deadline = time.monotonic() + seconds
    refused = 0
    while time.monotonic() < deadline:
        # Two daemons of this host's server, each its own process, started half a run apart:
        # alias refreshes land at any moment of SPIRE's rotations.
        first = account.spawn(server, "once", "--job", "refresh")
        time.sleep(0.4)
        second = account.spawn(server, "once", "--job", "refresh")
        for process in (first, second):
            _, err = process.communicate(timeout=120)
            if process.returncode == 4:
                refused += 1  # SPIRE's own health check failed for a moment: nothing written
            elif process.returncode not in (0, 1):
                row.problems.append(f"refresh exited {process.returncode}: {err[-400:]}")
        if row.problems:
            break
    # A reverted alias is left as it is: it resolves to the old key, which SPIRE schedules for
    # deletion, so no daemon refreshes it again, and SPIRE's next rotation of it moves it on.
    events = account.daemon_reverts()
    row.notes += [
        f"{alias}: UpdateAlias back to {was} after SPIRE moved it" for alias, was in events
    ]
    if refused:
        row.notes.append(f"{refused} runs refused: SPIRE's health check failed at that moment")
    row.rotations = sum(
        1 for e in account.proxy.exchanges("UpdateAlias") if is_spire(e.agent) and e.ok
    )
    row.created = account.created_by_spire()
    row.reverted = len(events)
    row.wrongly_touched = len(account.wrongly_touched())
    row.check(server.healthcheck(), "spire-server healthcheck fails at the end")
    row.check(row.rotations >= 2, f"only {row.rotations} rotations in {seconds:.0f} s")
    server.stop()
    return row


def _mode_name(servers: Sequence[SpireServer]) -> str:
    return " + ".join(f"{s.version} {s.mode}" for s in servers)


def live_servers(
    account: Account,
    *,
    modes: Sequence[bool],
    rounds: int = 4,
    versions: Sequence[str] | None = None,
) -> Row:
    """Running SPIRE servers of one trust domain, each with its daemon: reclaim, run again and
    again from every host, never touches a key of theirs, even with every spire-last-update
    20 days old (alias-mode servers never stamp; only a running server's aliases are fresh)."""
    chosen = versions or [VERSION] * len(modes)
    servers = [
        account.spire(f"live-{i}", tag_mode=m, version=v)
        for i, (m, v) in enumerate(zip(modes, chosen, strict=True))
    ]
    title = "reclaim beside running SPIRE servers" + (" (one per mode)" if len(modes) > 1 else "")
    row = Row(title, _mode_name(servers))
    for server in servers:
        server.start()
    for server in servers:
        _wait_for(lambda s=server: len(account.aliases_of(s)) >= 2, 30)  # type: ignore[misc]
    for _ in range(rounds):
        for server in servers:
            run = account.daemon(server, "once")
            row.check(run.code == 0, f"once beside {server.mode} SPIRE exited {run.code}")
    # What SPIRE's own alias-mode sweep reads (it deletes other servers' aliases not updated for
    # two weeks): the daemon keeps a running server's aliases' LastUpdatedDate fresh.
    started = time.time() - 120
    for server in servers:
        for alias in account.aliases_of(server):
            updated = account.proxy.alias_date(alias)
            row.check(updated is not None and updated >= started, f"{alias} not kept fresh")
    for server in servers:
        account.age(server, 20, aliases=False)  # tags stale, aliases as SPIRE keeps them
    for _ in range(rounds):
        for server in servers:
            run = account.daemon(server, "once", "--job", "reclaim")
            row.check(run.code == 0, f"reclaim beside {server.mode} SPIRE exited {run.code}")
            verdicts = next((x for x in run.out.splitlines() if x.strip().startswith("keys:")), "")
            # every key stale by its tag: kept for what the reclaim saw of SPIRE, not its tag
            row.check(" fresh" not in verdicts, f"a key still looked fresh: {verdicts}")
            row.notes.append(f"reclaim beside {server.mode}: {verdicts.strip()}")
    for server in servers:
        row.check(server.healthcheck(), f"{server.mode} SPIRE unhealthy at the end")
    row.created = account.created_by_spire()
    row.wrongly_touched = len(account.wrongly_touched())
    row.reverted = max(len(account.reverted_aliases()), len(account.daemon_reverts()))
    return row


def stopped_for_good(account: Account) -> Row:
    """A tag-mode SPIRE server stops for good beside a running alias-mode one: its host's daemon
    stops stamping (the liveness gate), the peer's daemon reclaims its keys once they are stale,
    and the server started again fails as docs/operations.md says until its aliases go."""
    live = account.spire("live", tag_mode=False)
    dead = account.spire("dead", tag_mode=True)
    row = Row("a SPIRE server stopped for good, then started again", _mode_name([live, dead]))
    for server in (live, dead):
        server.start()
    for server in (live, dead):
        _wait_for(lambda s=server: len(account.aliases_of(s)) >= 2, 30)  # type: ignore[misc]
        row.check(account.daemon(server, "once").code == 0, f"once beside {server.mode} failed")
    dead_keys = set(account.aliases_of(dead).values())
    dead.stop()
    account.age(dead, 20)
    account.dead |= dead_keys
    mark = len(account.proxy.exchanges())
    run = account.daemon(dead, "once", "--job", "refresh")
    writes = [
        e
        for e in account.proxy.exchanges()[mark:]
        if not is_spire(e.agent) and e.operation in (*HARMFUL, "UpdateAlias")
    ]
    row.check(run.code != 0, "refresh beside a stopped SPIRE server exited 0")
    row.check(not writes, f"refresh beside a stopped SPIRE server wrote: {writes}")
    row.check("not alive" in run.out + run.err, "the refusal does not say SPIRE is not alive")
    run = account.daemon(live, "once", "--job", "reclaim")
    row.check(run.code == 0, f"the peer's reclaim exited {run.code}: {run.err[-600:]}")
    for key_id in dead_keys:
        row.check(
            account.emulator.key_state(key_id) == "PendingDeletion",
            f"the stopped server's key {key_id} was not reclaimed",
        )
    # Started again within the pending window: its aliases still resolve to pending keys.
    code = dead.run_until_exit()
    row.check(code != 0, "SPIRE started on aliases of keys pending deletion")
    row.check(
        bool(dead.log_lines("found disabled SPIRE key")),
        'SPIRE did not fail with "found disabled SPIRE key"',
    )
    listing = account.daemon(dead, "keys", "--output", "json")
    row.check("alias_to_disabled_key" in listing.out, "keys does not show the alias finding")
    # The documented way out for a rebuilt server: delete its aliases; SPIRE starts afresh.
    for alias in account.aliases_of(dead):
        account.emulator.backend.delete_alias(alias)
    mark_keys = len(account.proxy.exchanges("CreateKey"))
    dead.start()
    row.check(dead.healthcheck(), "SPIRE unhealthy after its aliases were deleted")
    row.check(account.created_by_spire(mark_keys) >= 2, "SPIRE did not make new keys")
    dead.stop()
    row.created = account.created_by_spire()
    row.wrongly_touched = len(account.wrongly_touched())
    row.reverted = max(len(account.reverted_aliases()), len(account.daemon_reverts()))
    return row


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError("condition not reached")


# ------------------------------------------------------------------ the table


@contextlib.contextmanager
def account() -> Iterator[Account]:
    with (
        tempfile.TemporaryDirectory(prefix="interop-") as tmp,
        Emulator() as emulator,
        FaultProxy(emulator.endpoint_url, emulator=emulator) as proxy,
        aws_environment(emulator, Path(tmp)),
    ):
        emulator.reset()  # moto's backends are global to the process: start empty
        proxy.emulate_aws()
        acc = Account(emulator, proxy, Path(tmp))
        try:
            yield acc
        finally:
            acc.stop_all()


def rows(seconds: float) -> list[tuple[str, Callable[[Account], Row]]]:
    return [
        ("adopt alias", lambda a: adopt(a, tag_mode=False)),
        ("adopt tag", lambda a: adopt(a, tag_mode=True)),
        ("adopt rsa", lambda a: adopt(a, tag_mode=False, key_type="rsa-2048")),
        ("rotation alias", lambda a: rotation(a, seconds=seconds, ca_ttl="12s")),
        ("live alias", lambda a: live_servers(a, modes=[False])),
        ("live tag", lambda a: live_servers(a, modes=[True])),
        ("live mixed", lambda a: live_servers(a, modes=[False, True])),
        ("adopt legacy", lambda a: adopt(a, tag_mode=False, version=LEGACY)),
        (
            "live legacy mixed",
            lambda a: live_servers(a, modes=[False, True], versions=[LEGACY, VERSION]),
        ),
        ("stopped", stopped_for_good),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.interop", description=__doc__)
    parser.add_argument("--only", default="", help="run the rows whose name contains this")
    parser.add_argument("--seconds", type=float, default=90.0, help="rotation loop length")
    args = parser.parse_args(argv)
    results: list[tuple[Row, float]] = []
    for name, scenario in rows(args.seconds):
        if args.only not in name:
            continue
        started = time.monotonic()
        with account() as acc:
            row = scenario(acc)
            row.runs = acc.runs
        results.append((row, time.monotonic() - started))
    header = (
        "| scenario | SPIRE | daemon runs | keys SPIRE created | SPIRE rotations "
        "| keys wrongly touched | aliases reverted | s |"
    )
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row, took in results:
        print(
            f"| {row.scenario} | {row.spire} | {row.runs} | {row.created} | {row.rotations} "
            f"| {row.wrongly_touched} | {row.reverted_text} | {took:.0f} |"
        )
    print(SWEEP_NOTE)
    failed = [row for row, _ in results if not row.ok]
    for row, _ in results:
        if row in failed or (row.reverted and not row.judge_reverts):
            print(f"\n{row.scenario} ({row.spire}):")
            for line in row.problems + row.notes:
                print(f"  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
