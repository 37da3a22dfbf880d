"""The failure matrix: the daemon against an AWS-faithful emulator with faults, judged by AWS state.

Each scenario seeds a world in the emulator (in-process), runs the daemon's CLI through the
:class:`~devtools.faultproxy.FaultProxy` with AWS's behaviours on (key-state rules, alias dates,
ListAliases paging), injects its faults, and then judges the *final AWS state* read back from the
emulator, plus every mutating request the proxy saw:

* **converged**: every key ended as the scenario expects (reclaimed, stamped, unchanged...), no
  key is left ``spire-active=false`` but ``Enabled`` unless the scenario expects that, and no key's
  deletion was scheduled twice;
* **wrongly touched**: keys that must be kept (serving keys, live peers, protected, malformed...)
  and got a mutating call they must never get (anything but a stamp, a migration to
  ``spire-active=true`` or an alias refresh to the same target for a serving key; nothing at all for
  a bystander), or ended harmed.

The same functions back ``tests/test_reliability.py`` (which asserts on their
:class:`ScenarioOutcome`) and ``make reliability`` (``devtools/reliability.py``, which prints
them as a table).

Runs are the real CLI: ``daemon.cli.main`` in-process, or ``python -m daemon`` as a subprocess
where a process must die (SIGKILL from the proxy) or two daemons must run at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import boto3
from botocore.retries.standard import ExponentialBackoff
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from daemon import spire
from daemon.cli import main as cli_main
from daemon.durations import format_duration
from devtools.emulator import REGION, Emulator
from devtools.faultproxy import MUTATING, MUTATING_OPERATIONS, FaultProxy, key_id_of
from devtools.spire_health import SpireHealth

__all__ = [
    "DENIALS",
    "Final",
    "Harness",
    "KeySpec",
    "Role",
    "ScenarioOutcome",
    "World",
    "access_denied",
    "aws_environment",
    "clock_skew",
    "combine",
    "fast_backoff",
    "fault_free",
    "judge",
    "key_specs",
    "keys_listing_under_clock_skew",
    "kill_after_mutation",
    "kill_matrix",
    "lost_answers",
    "malformed_matrix",
    "malformed_tags",
    "mixed_fleet",
    "mutating_calls_per_run",
    "operator_restore",
    "replica_rotates_alias",
    "seed_fleet",
    "throttling",
    "two_daemons",
]

REPO = Path(__file__).resolve().parent.parent

TD = "example.org"
OTHER_TD = "other.example.org"
SERVER = "0b6a1bd4-2a5f-4a8b-9a4e-1f0e7c6d5a43"  # this server
PEER_DEAD = "d3f5c6a1-7b8e-4c2d-9f0a-123456789abc"  # stopped refreshing weeks ago
PEER_LIVE = "5e0c2f4a-1111-4222-8333-444455556666"  # another live server of the trust domain
PEER_ALIAS = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"  # an older SPIRE server in alias mode
ACME = "bundle-acme-foo.bar+rsa"
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
#: How far a stamp may be from AWS's clock and still count as "stamped by this run".
STAMP_SLACK = 600.0
#: AWS retry budget the scenarios give the daemon (total attempts per call, the first included).
MAX_ATTEMPTS = 4


class Role(StrEnum):
    """Which mutating calls may name a key."""

    SERVING = "serving"  # this server's key: stamps, migration (active=true), alias refreshes
    DEAD = "dead"  # a reclaim candidate: spire-active=false, then ScheduleKeyDeletion
    BYSTANDER = "bystander"  # nothing, ever


class Final(StrEnum):
    """How a key must end."""

    FRESH = "fresh"  # Enabled, the five SPIRE tags, spire-last-update on AWS's clock now
    UNCHANGED = "unchanged"  # tags and key state exactly as seeded
    RECLAIMED = "reclaimed"  # PendingDeletion, spire-active=false
    MARKED = "marked"  # Enabled, spire-active=false (a reclaim the run could not finish)


# ------------------------------------------------------------------ runs


@dataclass
class Run:
    """One CLI run: exit code and output (``killed`` when the proxy SIGKILLed it)."""

    code: int
    out: str
    err: str

    @property
    def killed(self) -> bool:
        """Whether the process died of SIGKILL."""
        return self.code == -9


def run_in_process(argv: Sequence[str]) -> Run:
    """``spire-kms-reconciler <argv>`` in this process (``daemon.cli.main``), its output kept
    and the root logger as it was before."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(list(argv))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return Run(int(code), out.getvalue(), err.getvalue())


def toml_value(value: Any) -> str:
    """A TOML literal for a settings value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


class Harness:
    """The emulator, the proxy in front of it and a work directory for settings files."""

    def __init__(
        self, emulator: Emulator, proxy: FaultProxy, workdir: Path, spire: SpireHealth
    ) -> None:
        self.emulator = emulator
        self.proxy = proxy
        self.workdir = workdir
        self.spire = spire  # every daemon's SPIRE server: a stand-in health listener
        self._configs = 0

    def fresh(self) -> None:
        """Empty the emulator, drop the proxy's rules and records, turn every AWS behaviour on;
        the SPIRE server answers alive."""
        self.emulator.reset()
        self.proxy.reset()
        self.proxy.emulate_aws()
        self.spire.set("alive")

    def aws_now(self) -> datetime:
        """AWS's clock (the local one shifted by the emulator's clock skew)."""
        return datetime.fromtimestamp(self.proxy.aws_time(), UTC)

    def config(
        self,
        server_id: str = SERVER,
        *,
        reclaim: Mapping[str, Any] | None = None,
        aws: Mapping[str, Any] | None = None,
        top: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a settings file for a daemon of ``server_id`` talking to the proxy."""
        self._configs += 1
        reclaim_settings = {"max_reclaims": 50, "max_reclaim_fraction": 1.0}
        reclaim_settings.update(reclaim or {})
        aws_settings: dict[str, Any] = {
            "endpoint_url": self.proxy.endpoint_url,
            "connect_timeout": "2s",
            "read_timeout": "15s",
            "max_attempts": MAX_ATTEMPTS,
            "mutating_calls_per_second": 50,
        }
        aws_settings.update(aws or {})
        lines = [
            f"trust_domain = {toml_value(TD)}",
            f"region = {toml_value(REGION)}",
            f"key_identifier_value = {toml_value(server_id)}",
            f"spire_health_url = {toml_value(self.spire.url)}",
            *(f"{k} = {toml_value(v)}" for k, v in (top or {}).items()),
            "[reclaim]",
            *(f"{k} = {toml_value(v)}" for k, v in reclaim_settings.items()),
            "[aws]",
            *(f"{k} = {toml_value(v)}" for k, v in aws_settings.items()),
            "[log]",
            'format = "json"',
            'level = "info"',
        ]
        path = self.workdir / f"config-{self._configs}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def once(self, *args: str, server_id: str = SERVER, **settings: Any) -> Run:
        """Run ``spire-kms-reconciler <args>`` in this process (``daemon.cli.main``)."""
        return run_in_process([*args, "--config", str(self.config(server_id, **settings))])

    def subprocess_env(self) -> dict[str, str]:
        """The environment of a daemon subprocess: AWS pointed at the emulator, nothing else."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "SPIRE_KMS_RECONCILER_"))
        }
        env.update(self.emulator.env())
        env["AWS_CONFIG_FILE"] = str(self.workdir / "no-aws-config")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(self.workdir / "no-aws-credentials")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        return env

    def spawn(
        self,
        *args: str,
        server_id: str = SERVER,
        env: Mapping[str, str] | None = None,
        config: Path | None = None,
        **settings: Any,
    ) -> subprocess.Popen[str]:
        """Start ``python -m daemon <args>`` as a subprocess (``env`` adds to its environment,
        ``config`` replaces the settings file written from ``settings``)."""
        config = config or self.config(server_id, **settings)
        return subprocess.Popen(
            [sys.executable, "-m", "daemon", *args, "--config", str(config)],
            cwd=REPO,
            env={**self.subprocess_env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def finish(process: subprocess.Popen[str], timeout: float = 90.0) -> Run:
        """Wait for a subprocess and collect its run."""
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        return Run(process.returncode, out, err)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the proxy holds no request (a killed client's calls may be in flight)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.proxy.idle():
            time.sleep(0.02)

    def mark(self) -> int:
        """The proxy's record position: judge only the requests from here on."""
        return len(self.proxy.exchanges())


@contextlib.contextmanager
def fast_backoff(scale: float = 0.05) -> Iterator[None]:
    """Scale botocore's retry backoff (in this process) by ``scale``.

    The throttling rows retry hundreds of times; at AWS's pace (up to 1, 2, 4 s per retry) one
    run takes 10-20 s. Scaling the delay keeps every attempt, which is what the rows bound and
    count, and only shortens the waits between them.
    """
    original = ExponentialBackoff.delay_amount

    def scaled(self: ExponentialBackoff, context: Any) -> float:
        return float(original(self, context)) * scale

    ExponentialBackoff.delay_amount = scaled
    try:
        yield
    finally:
        ExponentialBackoff.delay_amount = original


@contextlib.contextmanager
def aws_environment(emulator: Emulator, workdir: Path) -> Iterator[None]:
    """Point this process's AWS configuration at the emulator alone (for in-process runs)."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("AWS_", "SPIRE_KMS_RECONCILER_")):
            del os.environ[name]
    os.environ.update(emulator.env())
    os.environ["AWS_CONFIG_FILE"] = str(workdir / "no-aws-config")
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(workdir / "no-aws-credentials")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ------------------------------------------------------------------ worlds


@dataclass
class World:
    """The keys a scenario seeded, by name, with what may happen to them and how they must end."""

    keys: dict[str, str] = field(default_factory=dict)  # name -> ARN
    roles: dict[str, Role] = field(default_factory=dict)
    finals: dict[str, Final] = field(default_factory=dict)
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (server, key ID)
    aliases: dict[str, str] = field(default_factory=dict)  # alias name -> key name
    seeded: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def arn(self, name: str) -> str:
        """The ARN of the key called ``name``."""
        return self.keys[name]

    def name_of(self, key: str) -> str | None:
        """The name of a key given by key ID or ARN, if the world has it."""
        key_id = key_id_of(key)
        for name, arn in self.keys.items():
            if key_id_of(arn) == key_id:
                return name
        return None

    def expect(self, name: str, role: Role | None = None, final: Final | None = None) -> None:
        """Change what may happen to a key, or how it must end."""
        if role is not None:
            self.roles[name] = role
        if final is not None:
            self.finals[name] = final

    def snapshot(self, emulator: Emulator) -> None:
        """Remember every key's state and tags: what ``UNCHANGED`` compares with."""
        self.seeded = {
            name: (emulator.key_state(arn), emulator.tags(arn)) for name, arn in self.keys.items()
        }

    def fingerprint(self, emulator: Emulator, aws_now: float) -> dict[str, Any]:
        """The world's state by key name, relative to its seeding: each tag is "as seeded",
        "now" (a stamp within STAMP_SLACK of ``aws_now``) or its value; so two worlds seeded
        alike at different moments compare equal when the same things happened to them."""
        result: dict[str, Any] = {}
        for name, arn in sorted(self.keys.items()):
            _, seeded_tags = self.seeded.get(name, ("", {}))
            tags: dict[str, str] = {}
            for key, value in emulator.tags(arn).items():
                timed = key in (spire.TAG_LAST_UPDATE, spire.TAG_MARKED_AT)
                stamp = spire.parse_last_update(value) if timed else None
                if seeded_tags.get(key) == value:
                    tags[key] = "as seeded"
                elif stamp is not None and abs(stamp - aws_now) <= STAMP_SLACK:
                    tags[key] = "now"
                else:
                    tags[key] = value
            dropped = sorted(set(seeded_tags) - set(tags))
            result[name] = (emulator.key_state(arn), tuple(sorted(tags.items())), tuple(dropped))
        for alias in sorted(self.aliases):
            target = emulator.alias_target(alias)
            result[alias] = self.name_of(target) if target else None
        return result


class Seeder:
    """Creates a world's keys relative to AWS's clock."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.world = World()
        self.now = harness.aws_now()

    def key(
        self,
        name: str,
        role: Role,
        final: Final,
        *,
        server: str,
        key_id: str,
        last_update: timedelta | str | None,
        active: str | None = "true",
        alias: bool = False,
        alias_age: timedelta | None = None,
        created: timedelta = 90 * DAY,
        tagged: bool = True,
        trust_domain: str = TD,
        extra: Mapping[str, str] | None = None,
        pending: bool = False,
        marked: timedelta | None = None,
    ) -> str:
        """Seed one key; ``last_update`` is an age (AWS's clock), a raw tag value, or missing;
        ``marked``: the daemon marked it spire-active=false that long ago."""
        extra_tags = dict(extra or {})
        if marked is not None:
            extra_tags[spire.TAG_MARKED_AT] = str(int((self.now - marked).timestamp()))
        unix: int | None = None
        if isinstance(last_update, timedelta):
            unix = int((self.now - last_update).timestamp())
        elif isinstance(last_update, str):
            extra_tags[spire.TAG_LAST_UPDATE] = last_update
        arn = self.h.emulator.spire_key(
            trust_domain,
            server,
            key_id,
            last_update=unix,
            active=active,
            alias=alias,
            tagged=tagged,
            created_at=self.now - created,
            extra_tags=extra_tags or None,
        )
        if alias:
            alias_name = spire.alias_name(trust_domain, server, key_id)
            self.world.aliases[alias_name] = name
            if alias_age is not None:
                self.h.proxy.set_alias_date(
                    alias_name, self.now - alias_age, created=self.now - created
                )
        if pending:
            self.h.emulator.backend.schedule_key_deletion(key_id_of(arn), 7)
        self.world.keys[name] = arn
        self.world.roles[name] = role
        self.world.finals[name] = final
        self.world.owners[name] = (server, key_id)
        return arn

    def done(self, foreign: int = 0) -> World:
        """Add ``foreign`` keys of other teams (each with an alias) and snapshot the world."""
        if foreign:
            self.h.emulator.foreign_keys(foreign, aliases_every=1)
        self.world.snapshot(self.h.emulator)
        return self.world


def seed_fleet(h: Harness) -> World:
    """A trust domain with every kind of key the daemon meets, and 230 foreign aliases (so that
    the account-wide alias scan takes three pages).

    A fault-free ``once`` migrates one key, stamps two, refreshes two aliases, marks two keys and
    schedules three deletions (one completes an interrupted reclaim).
    """
    s = Seeder(h)
    fresh, serving, dead, bystander = Final.FRESH, Role.SERVING, Role.DEAD, Role.BYSTANDER
    same, gone = Final.UNCHANGED, Final.RECLAIMED
    s.key("own x509-CA-A (alias target)", serving, fresh, server=SERVER, key_id="x509-CA-A",
          last_update=3 * DAY, alias=True, created=20 * DAY)  # fmt: skip
    s.key("own JWT-Signer-A (tag mode)", serving, fresh, server=SERVER, key_id="JWT-Signer-A",
          last_update=3 * DAY, created=60 * DAY)  # fmt: skip
    s.key("own ACME key (legacy, alias only)", serving, fresh, server=SERVER, key_id=ACME,
          last_update=None, tagged=False, alias=True, created=30 * DAY)  # fmt: skip
    s.key("own x509-CA-A (superseded)", bystander, same, server=SERVER, key_id="x509-CA-A",
          last_update=3 * DAY, created=40 * DAY)  # fmt: skip
    s.key("dead peer x509-CA-A (20 days stale)", dead, gone, server=PEER_DEAD,
          key_id="x509-CA-A", last_update=20 * DAY)  # fmt: skip
    s.key("dead peer JWT-Signer-A (no last-update)", dead, gone, server=PEER_DEAD,
          key_id="JWT-Signer-A", last_update=None)  # fmt: skip
    s.key("dead peer x509-CA-B (interrupted reclaim)", dead, gone, server=PEER_DEAD,
          key_id="x509-CA-B", last_update=20 * DAY, active="false", marked=HOUR)  # fmt: skip
    s.key("dead peer JWT-Signer-B (already pending)", bystander, same, server=PEER_DEAD,
          key_id="JWT-Signer-B", last_update=20 * DAY, active="false", pending=True)  # fmt: skip
    s.key("live peer x509-CA-A", bystander, same, server=PEER_LIVE, key_id="x509-CA-A",
          last_update=HOUR)  # fmt: skip
    s.key("live peer JWT-Signer-A", bystander, same, server=PEER_LIVE, key_id="JWT-Signer-A",
          last_update=HOUR)  # fmt: skip
    s.key("alias-mode peer (stale tag, alias updated 1h ago)", bystander, same,
          server=PEER_ALIAS, key_id="x509-CA-A", last_update=20 * DAY, alias=True,
          alias_age=HOUR)  # fmt: skip
    s.key("protected peer key", bystander, same, server=PEER_DEAD, key_id="WIT-Signer-A",
          last_update=30 * DAY, extra={"spire-protect": "true"})  # fmt: skip
    s.key("young peer key", bystander, same, server=PEER_DEAD, key_id="WIT-Signer-B",
          last_update=20 * DAY, created=2 * DAY)  # fmt: skip
    s.key("malformed peer key (last-update 1.5)", bystander, same, server=PEER_DEAD,
          key_id="bundle-acme-x", last_update="1.5")  # fmt: skip
    s.key("other trust domain, stale", bystander, same, server=PEER_DEAD, key_id="x509-CA-A",
          last_update=60 * DAY, trust_domain=OTHER_TD)  # fmt: skip
    return s.done(foreign=230)


# ------------------------------------------------------------------ judging


@dataclass
class Judgement:
    """What a world's final state and the proxy's record say."""

    problems: list[str] = field(default_factory=list)  # the world did not end as expected
    wrong: dict[str, list[str]] = field(default_factory=dict)  # key name -> forbidden touches


def _tags_of(body: Mapping[str, Any], operation: str) -> dict[str, str]:
    if operation == "TagResources":
        return {str(k): str(v) for k, v in (body.get("Tags") or {}).items()}
    return {str(t.get("TagKey")): str(t.get("TagValue")) for t in body.get("Tags") or []}


def _touch_verdicts(world: World, operation: str, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key name, why) for every key a mutating request names but must not."""
    wrong: list[tuple[str, str]] = []

    def name(key: str) -> str:
        return world.name_of(key) or f"key outside the world {key_id_of(key)}"

    if operation == "UpdateAlias":
        alias = str(body.get("AliasName"))
        target = key_id_of(str(body.get("TargetKeyId")))
        owner = world.aliases.get(alias)
        if owner is None or key_id_of(world.arn(owner)) != target:
            wrong.append((owner or name(target), f"UpdateAlias {alias} -> {target}"))
        elif world.roles[owner] is not Role.SERVING:
            wrong.append((owner, f"UpdateAlias of a {world.roles[owner]} key's alias {alias}"))
        return wrong
    if operation in ("TagResource", "TagResources"):
        tags = _tags_of(body, operation)
        refs = (
            [str(a) for a in body.get("ResourceARNList") or []]
            if operation == "TagResources"
            else [str(body.get("KeyId"))]
        )
        for ref in refs:
            key = world.name_of(ref)
            role = world.roles.get(key) if key else None
            stamp = set(tags) == {spire.TAG_LAST_UPDATE}
            migration = (
                operation == "TagResource"
                and set(tags) == set(spire.SPIRE_TAGS)
                and tags[spire.TAG_ACTIVE] == spire.ACTIVE_TRUE
                and key is not None
                and (tags[spire.TAG_SERVER_ID], tags[spire.TAG_KEY_ID]) == world.owners[key]
            )
            mark = (
                tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_FALSE
                and set(tags) == {spire.TAG_ACTIVE, spire.TAG_MARKED_AT}
                and spire.parse_last_update(tags[spire.TAG_MARKED_AT]) is not None
            )
            if role is Role.SERVING and (stamp or migration):
                continue
            if role is Role.DEAD and mark:
                continue
            wrong.append((key or name(ref), f"{operation} {tags}"))
        return wrong
    if operation == "ScheduleKeyDeletion":
        ref = str(body.get("KeyId"))
        key = world.name_of(ref)
        if key is None or world.roles[key] is not Role.DEAD:
            wrong.append((key or name(ref), "ScheduleKeyDeletion"))
        return wrong
    keys = {str(body[f]) for f in ("KeyId", "TargetKeyId") if body.get(f)}
    keys.update(str(a) for a in body.get("ResourceARNList") or [])
    return [(name(k), operation) for k in sorted(keys)] or [("?", operation)]


def judge(
    h: Harness, world: World, *, since: int = 0, stamped_by: float | None = None
) -> Judgement:
    """Judge the world's final AWS state and the mutating requests since record ``since``.

    ``stamped_by`` is AWS's clock (Unix seconds) the FRESH stamps must be close to (default: now).
    """
    emu = h.emulator
    aws_now = h.proxy.aws_time() if stamped_by is None else stamped_by
    verdict = Judgement()
    problems = verdict.problems

    def wrong(name: str, why: str) -> None:
        verdict.wrong.setdefault(name, []).append(why)

    for name, arn in world.keys.items():
        state, tags = emu.key_state(arn), emu.tags(arn)
        final, role = world.finals[name], world.roles[name]
        seeded_state, seeded_tags = world.seeded.get(name, (state, tags))
        active = tags.get(spire.TAG_ACTIVE)
        if final is Final.UNCHANGED and (state, tags) != (seeded_state, seeded_tags):
            changed = {
                k: (seeded_tags.get(k), tags.get(k))
                for k in set(tags) | set(seeded_tags)
                if tags.get(k) != seeded_tags.get(k)
            }
            problems.append(
                f"{name}: expected unchanged, now {state} (was {seeded_state}) {changed}"
            )
        elif final is Final.RECLAIMED and (state, active) != ("PendingDeletion", "false"):
            problems.append(f"{name}: expected reclaimed, is {state} spire-active={active}")
        elif final is Final.MARKED and (state, active) != ("Enabled", "false"):
            problems.append(f"{name}: expected marked (Enabled, false), is {state} {active}")
        elif final is Final.FRESH:
            server, key_id = world.owners[name]
            stamp = spire.parse_last_update(tags.get(spire.TAG_LAST_UPDATE))
            want = spire.spire_tags(TD, server, key_id, stamp or 0)
            if state != "Enabled" or {k: tags.get(k) for k in want} != want:
                problems.append(f"{name}: expected Enabled with SPIRE's tags, is {state} {tags}")
            elif stamp is None or abs(stamp - aws_now) > STAMP_SLACK:
                problems.append(
                    f"{name}: spire-last-update {tags.get(spire.TAG_LAST_UPDATE)} is not AWS's "
                    f"now ({int(aws_now)})"
                )
        if (
            state == "Enabled"
            and active == spire.ACTIVE_FALSE
            and final not in (Final.MARKED, Final.UNCHANGED)
        ):
            problems.append(f"{name}: left spire-active=false but Enabled")
        if role is not Role.DEAD and seeded_state == "Enabled" and state != "Enabled":
            wrong(name, f"key state {seeded_state} -> {state}")
        if (
            role is not Role.DEAD
            and active == spire.ACTIVE_FALSE
            and seeded_tags.get(spire.TAG_ACTIVE) != spire.ACTIVE_FALSE
        ):
            wrong(name, "spire-active set to false")

    for alias, owner in world.aliases.items():
        target = emu.alias_target(alias)
        if target != key_id_of(world.arn(owner)):
            wrong(owner, f"alias {alias} now points to {target}")

    exchanges = h.proxy.exchanges()[since:]
    effective: Counter[str] = Counter()
    for ex in exchanges:
        if ex.operation not in MUTATING_OPERATIONS:
            continue
        for name, why in _touch_verdicts(world, ex.operation, ex.body):
            wrong(name, why)
        if ex.operation == "ScheduleKeyDeletion" and ex.effective:
            effective[world.name_of(str(ex.body.get("KeyId"))) or str(ex.body.get("KeyId"))] += 1
    for name, times in effective.items():
        if times > 1:
            problems.append(f"{name}: ScheduleKeyDeletion carried out {times} times")
    return verdict


# ------------------------------------------------------------------ outcomes


@dataclass
class ScenarioOutcome:
    """A scenario's figures and, when it did not hold, why."""

    scenario: str
    faults: str = "none"
    runs: int = 0
    trials: int = 1
    converged_trials: int = 0
    wrongly_touched: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    runs_log: list[Run] = field(default_factory=list)
    world: World | None = None

    @property
    def converged(self) -> bool:
        """Whether every trial ended in the expected state."""
        return self.converged_trials == self.trials and not self.problems

    @property
    def ok(self) -> bool:
        """Converged, and no key wrongly touched."""
        return self.converged and not self.wrongly_touched

    def record(self, run: Run) -> Run:
        """Count a run and keep it for the explanation."""
        self.runs += 1
        self.runs_log.append(run)
        return run

    def absorb(self, verdict: Judgement, *, trial: str = "", counts: bool = True) -> bool:
        """Add a judgement; return whether it converged. ``counts``: it ends a trial."""
        prefix = f"[{trial}] " if trial else ""
        self.problems += [prefix + p for p in verdict.problems]
        for name, why in verdict.wrong.items():
            self.wrongly_touched.add(name)
            self.problems.append(f"{prefix}WRONGLY TOUCHED {name}: {'; '.join(why[:3])}")
        converged = not verdict.problems
        self.converged_trials += int(converged and counts)
        return converged

    def expect(self, condition: bool, problem: str) -> None:
        """Record ``problem`` unless ``condition`` holds."""
        if not condition:
            self.problems.append(problem)

    def explain(self) -> str:
        """The problems, then the output of the last runs."""
        lines = [f"{self.scenario}: {len(self.problems)} problem(s)", *self.problems]
        for run in self.runs_log[-3:]:
            lines += [f"--- exit {run.code}", run.out[-4000:], run.err[-1500:]]
        return "\n".join(lines)


def _expect_code(outcome: ScenarioOutcome, run: Run, codes: Iterable[int], what: str) -> None:
    wanted = set(codes)
    outcome.expect(run.code in wanted, f"{what}: exit code {run.code}, expected {sorted(wanted)}")


# ------------------------------------------------------------------ fault-free control


def fault_free(h: Harness) -> tuple[ScenarioOutcome, dict[str, Any], int]:
    """The fleet world, one ``once`` without faults: outcome, final fingerprint, requests made."""
    h.fresh()
    world = seed_fleet(h)
    outcome = ScenarioOutcome("fault-free control", world=world)
    run = outcome.record(h.once("once"))
    _expect_code(outcome, run, [0], "fault-free once")
    outcome.absorb(judge(h, world))
    return outcome, world.fingerprint(h.emulator, h.proxy.aws_time()), h.proxy.count()


def mutating_calls_per_run(h: Harness) -> int:
    """How many mutating requests a fault-free ``once`` on the fleet world makes."""
    h.fresh()
    seed_fleet(h)
    h.once("once")
    return h.proxy.count(MUTATING)


# ------------------------------------------------------------------ throttling


def throttling(
    h: Harness, *, rate: float = 0.5, seed: int = 1, max_runs: int = 8, bursts: bool = False
) -> ScenarioOutcome:
    """Throttle ``rate`` of all calls (seeded), or bursts, and run ``once`` until a clean run
    (at most ``max_runs``); the end state must equal a fault-free control run's on an identically
    seeded world, with retries bounded by the control's request count times MAX_ATTEMPTS.

    With half of all calls throttled, a call fails after MAX_ATTEMPTS with probability 1/16, so
    a run of some thirty calls rarely goes clean: the runs it takes vary with the order in which
    concurrent requests draw from the seeded faults, and ``max_runs`` leaves room for that."""
    control, expected, control_requests = fault_free(h)
    h.fresh()
    world = seed_fleet(h)
    if bursts:
        h.proxy.throttle_bursts(3, every=6)
        faults = "throttling bursts (3 of every 6 calls)"
    else:
        h.proxy.throttle_rate(rate, seed=seed)
        faults = f"throttling on {rate:.0%} of all calls (seed {seed})"
    outcome = ScenarioOutcome(
        f"throttling, {'bursts' if bursts else f'{rate:.0%} of calls'}", world=world
    )
    outcome.problems += [f"[control] {p}" for p in control.problems]
    for _ in range(max_runs):
        run = outcome.record(h.once("once"))
        _expect_code(outcome, run, [0, 1], f"run {outcome.runs}")
        if run.code == 0:
            break
    exchanges = h.proxy.exchanges()
    throttled = sum(
        1 for e in exchanges if e.error in ("ThrottlingException", "ThrottledException")
    )
    outcome.faults = f"{faults}: {throttled} of {len(exchanges)} requests throttled"
    outcome.absorb(judge(h, world))
    actual = world.fingerprint(h.emulator, h.proxy.aws_time())
    if actual != expected:
        outcome.converged_trials = 0
        differ = sorted(k for k in expected if expected[k] != actual.get(k))
        outcome.problems.append(f"end state differs from the fault-free run for {differ}")
    bound = outcome.runs * control_requests * MAX_ATTEMPTS
    outcome.expect(
        len(exchanges) <= bound,
        f"{len(exchanges)} requests in {outcome.runs} runs, more than the bound {bound} "
        f"({control_requests} a fault-free run x {MAX_ATTEMPTS} attempts)",
    )
    outcome.expect(throttled > 0, "no request was throttled: the fault did not apply")
    return outcome


# ------------------------------------------------------------------ SIGKILL mid-run


def kill_after_mutation(h: Harness, k: int) -> ScenarioOutcome:
    """Run ``python -m daemon once`` and SIGKILL it once its ``k``-th mutating call was carried
    out, before it gets the answer; the next run must converge."""
    h.fresh()
    world = seed_fleet(h)
    outcome = ScenarioOutcome(f"SIGKILL after mutating call {k}", world=world)
    box: dict[str, int] = {}
    h.proxy.kill_after(MUTATING, k, lambda: box.get("pid"))
    process = h.spawn("once")
    box["pid"] = process.pid
    killed = outcome.record(h.finish(process))
    h.settle()
    outcome.expect(killed.killed, f"the run was not killed (exit {killed.code}): k={k} too large?")
    carried_out = [e.operation for e in h.proxy.exchanges(MUTATING) if e.forwarded]
    fatal = carried_out[k - 1] if len(carried_out) >= k else "?"
    outcome.faults = f"SIGKILL after mutating call {k} ({fatal})"
    h.proxy.clear_rules()
    run = outcome.record(h.once("once"))
    _expect_code(outcome, run, [0], "the run after the kill")
    outcome.absorb(judge(h, world), trial=f"k={k}")
    return outcome


# ------------------------------------------------------------------ two daemons at once


def _is_mark(body: Mapping[str, Any]) -> bool:
    """Whether a TagResource or TagResources request sets spire-active=false."""
    tags = body.get("Tags")
    if isinstance(tags, dict):
        return tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_FALSE
    return any(
        t.get("TagKey") == spire.TAG_ACTIVE and t.get("TagValue") == spire.ACTIVE_FALSE
        for t in tags or []
    )


def two_daemons(h: Harness) -> ScenarioOutcome:
    """Two servers of one trust domain reclaim at the same moment (two subprocesses; the proxy
    holds each key's TagResource and ScheduleKeyDeletion until both daemons sent theirs)."""
    h.fresh()
    s = Seeder(h)
    for server, who in ((SERVER, "server A"), (PEER_LIVE, "server B")):
        s.key(f"{who} x509-CA-A (alias target)", Role.SERVING, Final.FRESH, server=server,
              key_id="x509-CA-A", last_update=3 * DAY, alias=True)  # fmt: skip
        s.key(f"{who} JWT-Signer-A (tag mode)", Role.SERVING, Final.FRESH, server=server,
              key_id="JWT-Signer-A", last_update=3 * DAY)  # fmt: skip
    for kid in ("x509-CA-A", "JWT-Signer-A"):
        s.key(f"dead peer {kid}", Role.DEAD, Final.RECLAIMED, server=PEER_DEAD, key_id=kid,
              last_update=20 * DAY)  # fmt: skip
    s.key("dead peer x509-CA-B (interrupted)", Role.DEAD, Final.RECLAIMED, server=PEER_DEAD,
          key_id="x509-CA-B", last_update=20 * DAY, active="false", marked=HOUR)  # fmt: skip
    s.key("alias-mode peer", Role.BYSTANDER, Final.UNCHANGED, server=PEER_ALIAS,
          key_id="x509-CA-A", last_update=20 * DAY, alias=True, alias_age=HOUR)  # fmt: skip
    s.key("protected peer key", Role.BYSTANDER, Final.UNCHANGED, server=PEER_DEAD,
          key_id="WIT-Signer-A", last_update=30 * DAY, extra={"spire-protect": "true"})  # fmt: skip
    world = s.done(foreign=30)
    dead = [n for n, r in world.roles.items() if r is Role.DEAD]
    for operation in ("TagResource", "TagResources"):  # the marks, however they are sent
        h.proxy.barrier(operation, parties=2, per_key=True, timeout=8, where=_is_mark)
    h.proxy.barrier("ScheduleKeyDeletion", parties=2, per_key=True, timeout=8)
    outcome = ScenarioOutcome("two daemons reclaim at once", world=world)
    first = h.spawn("once", server_id=SERVER)
    second = h.spawn("once", server_id=PEER_LIVE)
    runs = [outcome.record(h.finish(first)), outcome.record(h.finish(second))]
    h.settle()
    for run, who in zip(runs, ("server A", "server B"), strict=True):
        _expect_code(outcome, run, [0], f"{who}'s run")
    schedules = h.proxy.exchanges("ScheduleKeyDeletion")
    refused = [e for e in schedules if e.error == "KMSInvalidStateException"]
    # A DescribeKey on an alias name that does not exist (a tag-mode key) is a normal NotFound.
    errors = [e for e in h.proxy.exchanges(MUTATING) if not e.ok]
    outcome.faults = (
        f"two daemons race on {len(dead)} dead keys: {len(schedules)} ScheduleKeyDeletion, "
        f"{len(refused)} KMSInvalidStateException"
    )
    outcome.expect(
        len(schedules) == 2 * len(dead),
        f"{len(schedules)} ScheduleKeyDeletion requests: the daemons did not both try each key",
    )
    outcome.expect(
        len(errors) <= len(dead),
        f"error storm: {len(errors)} failed requests ({Counter(e.error for e in errors)})",
    )
    for name in dead:
        done = [e for e in schedules if e.ok and world.name_of(e.keys[0]) == name]
        outcome.expect(len(done) == 1, f"{name}: {len(done)} successful ScheduleKeyDeletion")
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ clock skew


def _seed_clock_world(h: Harness) -> tuple[Seeder, World]:
    s = Seeder(h)  # every age below is on AWS's clock
    s.key("own x509-CA-A (alias target)", Role.SERVING, Final.FRESH, server=SERVER,
          key_id="x509-CA-A", last_update=3 * DAY, alias=True)  # fmt: skip
    s.key("own ACME key (legacy, alias only)", Role.SERVING, Final.FRESH, server=SERVER,
          key_id=ACME, last_update=None, tagged=False, alias=True)  # fmt: skip
    s.key("peer key fresh by AWS's clock (1 day)", Role.BYSTANDER, Final.UNCHANGED,
          server=PEER_LIVE, key_id="x509-CA-A", last_update=DAY)  # fmt: skip
    s.key("peer key 2 minutes short of stale by AWS's clock", Role.BYSTANDER, Final.UNCHANGED,
          server=PEER_LIVE, key_id="JWT-Signer-A",
          last_update=14 * DAY - timedelta(minutes=2))  # fmt: skip
    s.key("peer key stale by AWS's clock (20 days)", Role.DEAD, Final.RECLAIMED,
          server=PEER_DEAD, key_id="x509-CA-A", last_update=20 * DAY)  # fmt: skip
    return s, s.done()


def clock_skew(h: Harness, minutes: int, *, tolerance: str = "5m") -> ScenarioOutcome:
    """The host clock ``minutes`` ahead of AWS's (negative: behind).

    Within SigV4's 5 minutes AWS takes the requests: staleness is judged on AWS's clock (a key
    2 minutes short of stale by AWS's clock is kept by a host 4 minutes ahead), stamps are on
    AWS's clock, and past ``tolerance`` the clock guard refuses the reclaim. Beyond 5 minutes AWS
    refuses every request's signature: the run fails, names the clock, and changes nothing.
    """
    h.fresh()
    h.emulator.clock_skew = timedelta(minutes=-minutes)
    _, world = _seed_clock_world(h)
    direction = "ahead" if minutes > 0 else "behind"
    amount = format_duration(timedelta(minutes=abs(minutes)))
    outcome = ScenarioOutcome(
        f"host clock {amount} {direction} (tolerance {tolerance})",
        faults=f"AWS's clock {amount} {'behind' if minutes > 0 else 'ahead of'} the host's, "
        "SigV4 signing time checked",
        world=world,
    )
    run = outcome.record(h.once("once", reclaim={"clock_skew_tolerance": tolerance}))
    signable = abs(minutes) <= 5
    guarded = signable and timedelta(minutes=abs(minutes)) > timedelta(
        minutes=int(tolerance.removesuffix("m"))
    )
    if not signable:
        _expect_code(outcome, run, [1], "once with a clock AWS refuses")
        outcome.expect("clock is off" in run.out, "the error does not say the clock is off")
        outcome.expect(h.proxy.successes(MUTATING) == [], "a write went through")
        world.expect("own x509-CA-A (alias target)", Role.SERVING, Final.UNCHANGED)
        world.expect("own ACME key (legacy, alias only)", Role.SERVING, Final.UNCHANGED)
        world.expect("peer key stale by AWS's clock (20 days)", Role.DEAD, Final.UNCHANGED)
    elif guarded:
        _expect_code(outcome, run, [4], "once past the clock tolerance")
        outcome.expect("REFUSED by the clock_skew guard" in run.out, "no clock refusal")
        outcome.expect(h.proxy.count("ScheduleKeyDeletion") == 0, "a deletion despite the guard")
        world.expect("peer key stale by AWS's clock (20 days)", Role.DEAD, Final.UNCHANGED)
    else:
        _expect_code(outcome, run, [0], "once within the clock tolerance")
    outcome.absorb(judge(h, world, stamped_by=h.proxy.aws_time()))
    return outcome


def keys_listing_under_clock_skew(h: Harness, minutes: int) -> ScenarioOutcome:
    """``keys --output json`` from a host ``minutes`` ahead of AWS: verdicts are judged on AWS's
    clock (contract §6.2), so the key 2 minutes short of stale is never listed "stale"."""
    outcome = clock_skew(h, minutes)
    world = outcome.world
    assert world is not None
    listing = outcome.record(h.once("keys", "--output", "json"))
    rows = {row["key_arn"]: row for row in json.loads(listing.out or "[]")}
    for name, wrong in (
        ("peer key fresh by AWS's clock (1 day)", "stale"),
        ("peer key 2 minutes short of stale by AWS's clock", "stale"),
        ("own x509-CA-A (alias target)", "future"),
    ):
        shown = rows.get(world.arn(name), {}).get("verdict")
        outcome.expect(
            shown != wrong, f"keys lists {name!r} as {shown!r}, judged on the host's clock"
        )
    return outcome


# ------------------------------------------------------------------ malformed and hand-edited tags

_UNICODE_DIGITS = ("٠١٢٣٤٥٦٧٨٩", "０１２３４５６７８９", "०१२३४५६७८९", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗")
# What AWS admits in a tag value: letters, separators, numbers and _ . : / = + - @
_TAG_TEXT = st.characters(categories=("L", "N", "Zs"), include_characters="_.:/=+-@")
_CANONICAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class KeySpec:
    """A hand-edited peer key: each SPIRE tag's value, or None when the tag is missing."""

    trust_domain: str
    server_id: str | None
    key_id: str | None
    active: str | None
    last_update: str | None

    def tags(self) -> dict[str, str]:
        """The key's tags."""
        pairs = {
            spire.TAG_TRUST_DOMAIN: self.trust_domain,
            spire.TAG_SERVER_ID: self.server_id,
            spire.TAG_KEY_ID: self.key_id,
            spire.TAG_ACTIVE: self.active,
            spire.TAG_LAST_UPDATE: self.last_update,
        }
        return {k: v for k, v in pairs.items() if v is not None}

    def expected(self, now: float, stale_after: timedelta = 14 * DAY) -> str:
        """The oracle: the verdict this key deserves (old, Enabled, no alias, unprotected).

        ``absent`` (not of this trust domain), ``malformed``, ``future``, ``inactive``, ``fresh``
        or ``reclaimed``: only a key whose tags are exactly well formed and stale may be
        reclaimed. These keys carry no mark of the daemon's, so one already tagged
        ``spire-active=false`` was not left by its interrupted reclaim: left alone.
        """
        if self.trust_domain != TD:
            return "absent"
        if not self.server_id or not self.key_id or self.active not in ("true", "false"):
            return "malformed"
        dead = "inactive" if self.active == "false" else "reclaimed"
        if self.last_update is None:
            return dead
        if not _CANONICAL.fullmatch(self.last_update) or int(self.last_update) > _INT64_MAX:
            return "malformed"
        value = int(self.last_update)
        if value > now + 300:
            return "future"
        if value > now - stale_after.total_seconds():
            return "inactive" if self.active == "false" else "fresh"
        return dead


def _last_update_values(now: int) -> st.SearchStrategy[str | None]:
    day = int(DAY.total_seconds())
    stale = st.integers(15 * day, 3000 * day).map(lambda ago: str(now - ago))
    fresh = st.integers(60, 13 * day).map(lambda ago: str(now - ago))
    future = st.integers(3600, 10**10).map(lambda ahead: str(now + ahead))

    def digits(value: str, table: str) -> str:
        return value.translate(str.maketrans("0123456789", table))

    return st.one_of(
        st.none(),
        stale,
        fresh,
        fresh,
        fresh,
        future,
        st.just(""),
        st.text(_TAG_TEXT, max_size=24),
        st.floats().map(str),
        st.builds(lambda v, f: v + f, stale, st.sampled_from([".0", ".5", "e0", "E+0"])),
        st.builds(lambda sign, v: sign + v, st.sampled_from(["+", "-", "−"]), stale),
        st.builds(
            lambda pad, v, lead: pad + v if lead else v + pad,
            st.sampled_from([" ", "  ", "\u00a0", "\u2003", "\u3000"]),
            stale,
            st.booleans(),
        ),
        st.integers(_INT64_MAX + 1, 10**40).map(str),
        st.integers(now - 3000 * day, now + 10**9).map(str),
        st.builds(digits, stale, st.sampled_from(_UNICODE_DIGITS)),
        st.builds(lambda zeros, v: zeros + v, st.sampled_from(["0", "00"]), stale),
        st.integers(-(10**12), -1).map(str),
        stale.map(lambda v: f"{int(v):_}"),
        stale.map(lambda v: hex(int(v))),
    )


def key_specs(now: int | None = None) -> st.SearchStrategy[KeySpec]:
    """Hand-edited peer keys: malformed ``spire-last-update`` values (text, floats, signs,
    whitespace, huge numbers, Unicode digits...), odd ``spire-active``, missing tags."""
    now = int(time.time()) if now is None else now
    return st.builds(
        KeySpec,
        trust_domain=st.sampled_from([TD] * 16 + ["Example.org", f"{TD} ", "example_org"]),
        server_id=st.sampled_from([PEER_DEAD] * 3 + [PEER_LIVE] * 3 + [None, "", " "]),
        key_id=st.sampled_from([*spire.WELL_KNOWN_KEY_IDS, ACME, None, ""]),
        active=st.one_of(
            st.sampled_from(["true", "false"]),
            st.sampled_from(["true", "false"]),
            st.sampled_from(["true", "false"]),
            st.none(),
            st.sampled_from(["True", "FALSE", " true", "false ", "yes", "1", "0", "", "\u00a0"]),
            st.text(_TAG_TEXT, max_size=8),
        ),
        last_update=_last_update_values(now),
    )


def malformed_tags(h: Harness, specs: Sequence[KeySpec]) -> ScenarioOutcome:
    """Seed ``specs`` as old, Enabled peer keys and run ``once --job reclaim``, then ``keys
    --output json``: only the keys the oracle calls stale may end reclaimed (and they must), and
    every anomaly is reported (verdict in ``keys``, a finding in ``once``)."""
    h.fresh()
    s = Seeder(h)
    now = s.now.timestamp()
    s.key("own x509-CA-A", Role.BYSTANDER, Final.UNCHANGED, server=SERVER, key_id="x509-CA-A",
          last_update=3 * DAY, alias=True)  # fmt: skip
    expected: dict[str, str] = {}
    for i, spec in enumerate(specs):
        name = f"#{i} {spec}"
        verdict = spec.expected(now)
        expected[name] = verdict
        reclaim = verdict == "reclaimed"
        arn = h.emulator.create_key(
            tags=spec.tags(),
            description=spire.key_description(TD, spec.key_id or "x"),
            created_at=s.now - 90 * DAY,
        )
        s.world.keys[name] = arn
        s.world.roles[name] = Role.DEAD if reclaim else Role.BYSTANDER
        s.world.finals[name] = Final.RECLAIMED if reclaim else Final.UNCHANGED
        s.world.owners[name] = (spec.server_id or "", spec.key_id or "")
    world = s.done()
    outcome = ScenarioOutcome("malformed and hand-edited tags", world=world)
    outcome.faults = f"{len(specs)} hand-edited keys ({Counter(expected.values())})"
    run = outcome.record(h.once("once", "--job", "reclaim"))
    _expect_code(outcome, run, [0], "once --job reclaim")
    listing = outcome.record(h.once("keys", "--output", "json"))
    _expect_code(outcome, listing, [0], "keys --output json")
    try:
        rows = {row["key_arn"]: row for row in json.loads(listing.out)}
    except ValueError:
        rows = {}
        outcome.problems.append("keys --output json did not print JSON")
    for name, verdict in expected.items():
        arn = world.arn(name)
        row = rows.get(arn)
        if verdict == "absent":
            outcome.expect(row is None, f"{name}: listed, but not of this trust domain")
            continue
        shown = row["verdict"] if row else None
        outcome.expect(shown == verdict, f"{name}: keys says {shown}, the oracle {verdict}")
        if verdict in ("malformed", "future", "inactive"):
            outcome.expect(
                re.search(rf"finding\s+\S+\s+{re.escape(arn)}", run.out) is not None,
                f"{name}: no finding reported by once",
            )
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ mixed fleet


def _peer_refreshes_aliases(h: Harness, aliases: Iterable[str]) -> None:
    """An alias-mode SPIRE server's keep-alive: UpdateAlias to the same target, via the proxy."""
    kms = boto3.client(
        "kms",
        endpoint_url=h.proxy.endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    for alias in aliases:
        target = h.emulator.alias_target(alias)
        kms.update_alias(AliasName=alias, TargetKeyId=target)


def mixed_fleet(h: Harness, alias_age_days: int) -> ScenarioOutcome:
    """A peer in alias mode: stale (or missing) ``spire-last-update``, its aliases updated
    ``alias_age_days`` ago (0: just now, through the proxy, as its SPIRE server does). Fresh
    aliases keep its keys; 20-day-old ones do not."""
    h.fresh()
    s = Seeder(h)
    fresh = alias_age_days < 14
    role, final = (Role.BYSTANDER, Final.UNCHANGED) if fresh else (Role.DEAD, Final.RECLAIMED)
    # Seeded 20 days old; with alias_age_days=0 the peer then refreshes them through the proxy.
    age = timedelta(days=alias_age_days or 20)
    s.key("own x509-CA-A (alias target)", Role.SERVING, Final.FRESH, server=SERVER,
          key_id="x509-CA-A", last_update=3 * DAY, alias=True)  # fmt: skip
    s.key("live peer x509-CA-A", Role.BYSTANDER, Final.UNCHANGED, server=PEER_LIVE,
          key_id="x509-CA-A", last_update=HOUR)  # fmt: skip
    s.key("alias-mode peer x509-CA-A (tag 20 days old)", role, final, server=PEER_ALIAS,
          key_id="x509-CA-A", last_update=20 * DAY, alias=True, alias_age=age)  # fmt: skip
    s.key("alias-mode peer JWT-Signer-A (no last-update tag)", role, final, server=PEER_ALIAS,
          key_id="JWT-Signer-A", last_update=None, alias=True, alias_age=age)  # fmt: skip
    world = s.done(foreign=230)
    peer_aliases = [a for a, n in world.aliases.items() if "alias-mode" in n]
    if not alias_age_days:
        _peer_refreshes_aliases(h, peer_aliases)
    since = h.mark()
    when = "just now" if not alias_age_days else f"{alias_age_days} days ago"
    outcome = ScenarioOutcome(
        f"mixed fleet, peer alias updated {when}",
        world=world,
    )
    run = outcome.record(h.once("once"))
    _expect_code(outcome, run, [0], "once")
    listing = outcome.record(h.once("keys", "--output", "json"))
    rows = {row["key_arn"]: row["verdict"] for row in json.loads(listing.out or "[]")}
    for alias in peer_aliases:
        name = world.aliases[alias]
        want = "alias_fresh" if fresh else "reclaimed"
        shown = rows.get(world.arn(name))
        outcome.expect(shown == want, f"{name}: keys says {shown}, expected {want}")
    listed = h.proxy.exchanges("ListAliases")
    pages = sum(1 for e in listed if "Marker" in e.body)
    outcome.faults = (
        f"AWS's alias dates; {len(listed)} ListAliases requests, {pages} of them for a next page"
    )
    outcome.expect(pages > 0, "the account-wide alias scan did not page")
    outcome.absorb(judge(h, world, since=since))
    return outcome


# ------------------------------------------------------------------ an operator restores keys


def operator_restore(h: Harness) -> ScenarioOutcome:
    """Keys reclaimed, then restored by an operator (CancelKeyDeletion leaves them Disabled;
    some are enabled again, re-tagged or protected): none is deleted again without a fresh stale
    verdict."""
    h.fresh()
    s = Seeder(h)
    s.key("own x509-CA-A (alias target)", Role.SERVING, Final.FRESH, server=SERVER,
          key_id="x509-CA-A", last_update=3 * DAY, alias=True)  # fmt: skip
    for kid in ("x509-CA-A", "JWT-Signer-A", "x509-CA-B"):
        s.key(f"live peer {kid}", Role.BYSTANDER, Final.UNCHANGED, server=PEER_LIVE,
              key_id=kid, last_update=HOUR)  # fmt: skip
    restored = {
        "cancelled (left Disabled)": "x509-CA-A",
        "cancelled, enabled, re-tagged active and fresh": "JWT-Signer-A",
        "cancelled and enabled only (still tagged stale, false)": "x509-CA-B",
        "cancelled, enabled, protected": "JWT-Signer-B",
    }
    for name, kid in restored.items():
        s.key(name, Role.DEAD, Final.RECLAIMED, server=PEER_DEAD, key_id=kid,
              last_update=20 * DAY)  # fmt: skip
    world = s.done()
    outcome = ScenarioOutcome("operator restores reclaimed keys", world=world)
    run = outcome.record(h.once("once"))
    _expect_code(outcome, run, [0], "first once")
    outcome.absorb(judge(h, world), trial="before the restore", counts=False)
    # The operator, with the AWS CLI (straight to KMS, not through the daemon's proxy).
    kms = boto3.client(
        "kms",
        endpoint_url=h.emulator.endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ids = {name: key_id_of(world.arn(name)) for name in restored}
    now = str(int(h.aws_now().timestamp()))
    for kid in ids.values():
        kms.cancel_key_deletion(KeyId=kid)
    for name in list(restored)[1:]:
        kms.enable_key(KeyId=ids[name])
    kms.tag_resource(
        KeyId=ids["cancelled, enabled, re-tagged active and fresh"],
        Tags=[
            {"TagKey": spire.TAG_ACTIVE, "TagValue": "true"},
            {"TagKey": spire.TAG_LAST_UPDATE, "TagValue": now},
        ],
    )
    kms.tag_resource(
        KeyId=ids["cancelled, enabled, protected"],
        Tags=[{"TagKey": "spire-protect", "TagValue": "true"}],
    )
    world.snapshot(h.emulator)
    for name in restored:
        world.expect(name, Role.BYSTANDER, Final.UNCHANGED)
    # Enabled again but still tagged false and stale: every rule still says stale (documented).
    world.expect(
        "cancelled and enabled only (still tagged stale, false)", Role.DEAD, Final.RECLAIMED
    )
    since = h.mark()
    outcome.faults = "CancelKeyDeletion, EnableKey, re-tagging, between runs"
    for attempt in ("second once", "third once"):
        run = outcome.record(h.once("once"))
        _expect_code(outcome, run, [0], attempt)
    outcome.absorb(judge(h, world, since=since), trial="after the restore")
    return outcome


# ------------------------------------------------------------------ permissions


@dataclass(frozen=True)
class Denial:
    """An AccessDenied variant: the operations denied and what must fail for want of them.

    Which action goes through which API is the daemon's choice (batched tag:TagResources with a
    kms:TagResource fallback, say), so expectations come from the run's own report: every action
    it reports failed must name a denied permission, its key must end as that failure leaves it,
    and every other key must end as in a fault-free run. ``must_fail`` lists the actions that
    have no other API and so must fail.
    """

    operations: tuple[str, ...]
    must_fail: tuple[tuple[str, str], ...] = ()  # (action kind, key or alias name)
    only: str | None = None  # deny only for this key (a key policy), by name
    recovers: bool = False  # run again with the permission granted; it must converge


_LEGACY = "own ACME key (legacy, alias only)"
_OWN_A = "own x509-CA-A (alias target)"
_OWN_JWT = "own JWT-Signer-A (tag mode)"
_DEAD_A = "dead peer x509-CA-A (20 days stale)"
_DEAD_JWT = "dead peer JWT-Signer-A (no last-update)"
_DEAD_B = "dead peer x509-CA-B (interrupted reclaim)"

#: The AccessDenied variants of the matrix, by label.
DENIALS: dict[str, Denial] = {
    "TagResource": Denial(("TagResource",)),
    # Batched tagging falls back to kms:TagResource (contract §5.4).
    "TagResources": Denial(("TagResources",)),
    "TagResources and TagResource": Denial(
        ("TagResources", "TagResource"),
        (
            ("stamp", _OWN_A),
            ("stamp", _OWN_JWT),
            ("migrate", _LEGACY),
            ("mark_inactive", _DEAD_A),
            ("mark_inactive", _DEAD_JWT),
        ),
    ),
    "UpdateAlias": Denial(
        ("UpdateAlias",), (("refresh_alias", _OWN_A), ("refresh_alias", _LEGACY))
    ),
    "ScheduleKeyDeletion": Denial(
        ("ScheduleKeyDeletion",),
        (
            ("schedule_deletion", _DEAD_A),
            ("schedule_deletion", _DEAD_JWT),
            ("schedule_deletion", _DEAD_B),
        ),
        recovers=True,
    ),
    "ScheduleKeyDeletion on one key": Denial(
        ("ScheduleKeyDeletion",), (("schedule_deletion", _DEAD_A),), only=_DEAD_A
    ),
}

#: How a key ends when one of its actions failed (the later steps for it do not happen).
_AFTER_FAILURE = {
    "migrate": Final.UNCHANGED,
    "stamp": Final.UNCHANGED,
    "mark_inactive": Final.UNCHANGED,
    "schedule_deletion": Final.MARKED,
}
_FAILURE_LINE = re.compile(r"^\s+failure\s+(?P<kind>\S+)\s+(?P<target>\S+)\s.*$", re.MULTILINE)


def access_denied(h: Harness, label: str) -> ScenarioOutcome:
    """Deny a mutating operation (``DENIALS[label]``): the run names each key that failed and
    the permission it lacks, exits 3 (0 when a fallback made every action succeed), and carries
    on with every other key's actions."""
    denial = DENIALS[label]
    h.fresh()
    world = seed_fleet(h)
    keys = [world.arn(denial.only)] if denial.only else None
    for operation in denial.operations:
        h.proxy.deny(operation, keys=keys)
    outcome = ScenarioOutcome(
        f"AccessDenied on {label}",
        faults=f"AccessDeniedException on {' and '.join(denial.operations)}"
        + (" (key policy, one key)" if denial.only else ""),
        world=world,
    )
    run = outcome.record(h.once("once"))
    denied = [e for e in h.proxy.exchanges() if e.error == "AccessDeniedException"]
    outcome.faults += f": {len(denied)} requests denied"
    by_target = {arn: name for name, arn in world.keys.items()} | dict(world.aliases)
    failures: set[tuple[str, str]] = set()
    for line in _FAILURE_LINE.finditer(run.out):
        kind, name = line["kind"], by_target.get(line["target"], line["target"])
        failures.add((kind, name))
        outcome.expect(
            "grant" in line[0] and any(f":{op}" in line[0] for op in denial.operations),
            f"the failure of {kind} {name} does not name the denied permission: {line[0]}",
        )
        if kind in _AFTER_FAILURE and name in world.keys:
            world.expect(name, final=_AFTER_FAILURE[kind])
    for kind, name in denial.must_fail:
        outcome.expect((kind, name) in failures, f"no failure reported for {kind} {name}")
    _expect_code(outcome, run, [3] if failures else [0], f"once with {label} denied")
    outcome.expect(
        any(line.lstrip().startswith("success ") for line in run.out.splitlines()),
        "no action succeeded: the run did not carry on",
    )
    if not failures:
        outcome.expect("denied" in run.err, "the denial and the fallback were not logged")
    if denial.recovers:
        outcome.absorb(judge(h, world), trial="denied", counts=False)
        h.proxy.clear_rules()
        for name, final in list(world.finals.items()):
            if final is Final.MARKED:
                world.expect(name, final=Final.RECLAIMED)
        run = outcome.record(h.once("once"))
        _expect_code(outcome, run, [0], "once with the permission granted")
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ answers lost in transit


def lost_answers(
    h: Harness, *, rate: float = 0.5, seed: int = 3, max_runs: int = 3
) -> ScenarioOutcome:
    """Drop the connection *after* the emulator carried out ``rate`` of the mutating calls: the
    client retries a change that already happened (AWS then refuses a second
    ScheduleKeyDeletion). The fleet must still converge, no key scheduled twice."""
    h.fresh()
    world = seed_fleet(h)
    h.proxy.reset_connection(MUTATING, after_forward=True, rate=rate, seed=seed)
    outcome = ScenarioOutcome("answers lost after the change", world=world)
    for _ in range(max_runs):
        run = outcome.record(h.once("once"))
        _expect_code(outcome, run, [0, 1], f"run {outcome.runs}")
        if run.code == 0:
            break
    for run in outcome.runs_log:
        outcome.expect(
            "KMSInvalidStateException" not in run.out,
            "a retried change AWS refused as already done was reported as a failure",
        )
    lost = [e for e in h.proxy.exchanges(MUTATING) if e.forwarded and e.status is None]
    outcome.faults = (
        f"connection reset after {len(lost)} of {h.proxy.count(MUTATING)} mutating calls "
        f"took effect ({rate:.0%}, seed {seed})"
    )
    outcome.expect(bool(lost), "no answer was lost: the fault did not apply")
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ a replica rotates an alias


def replica_rotates_alias(
    h: Harness, before: str = "TagResources", nth: int = 1
) -> ScenarioOutcome:
    """A replica of this server (same server ID) points x509-CA-A's alias at its new key while
    the daemon's refresh run is under way, just before the daemon's ``nth`` ``before`` call
    (for DescribeKey and UpdateAlias: the ``nth`` on that alias; the second DescribeKey is the
    re-read right before its UpdateAlias): the alias must keep pointing at the new key (never
    reverted)."""
    h.fresh()
    world = seed_fleet(h)
    s = Seeder(h)
    s.world = world
    new = "replica's new x509-CA-A (alias rotated mid-run)"
    arn = s.key(new, Role.SERVING, Final.UNCHANGED, server=SERVER, key_id="x509-CA-A",
                last_update=timedelta(0), created=timedelta(0))  # fmt: skip
    alias = spire.alias_name(TD, SERVER, "x509-CA-A")
    world.snapshot(h.emulator)

    rotated_at: list[int] = []
    seen: list[int] = []

    def rotate(body: dict[str, Any]) -> None:
        if before == "DescribeKey" and body.get("KeyId") != alias:
            return
        if before == "UpdateAlias" and body.get("AliasName") != alias:
            return
        seen.append(1)
        if len(seen) != nth:
            return
        # Requests recorded so far came before the rotation: the daemon's own keep-alive of the
        # alias among them. From here on the alias belongs to the new key.
        rotated_at.append(len(h.proxy.exchanges()))
        world.aliases[alias] = new
        h.emulator.backend.update_alias(key_id_of(arn), alias)  # moto: (target, alias name)

    h.proxy.before(before, rotate)
    outcome = ScenarioOutcome(
        "a replica rotates an alias mid-run",
        faults="UpdateAlias by a replica between the daemon's observation and its alias refresh",
        world=world,
    )
    run = outcome.record(h.once("once"))
    _expect_code(outcome, run, [0], "once")
    target = h.emulator.alias_target(alias)
    outcome.expect(
        target == key_id_of(arn),
        f"{alias} was reverted to {world.name_of(target or '')!r} after the replica rotated it",
    )
    outcome.expect(bool(rotated_at), f"the replica's rotation never ran (no {before} call)")
    outcome.absorb(judge(h, world, since=rotated_at[0] if rotated_at else 0))
    return outcome


# ------------------------------------------------------------------ aggregates (the table's rows)


def combine(scenario: str, faults: str, outcomes: Sequence[ScenarioOutcome]) -> ScenarioOutcome:
    """One row for many trials: runs add up, each trial converged or not."""
    row = ScenarioOutcome(scenario, faults=faults, trials=len(outcomes))
    for i, outcome in enumerate(outcomes, 1):
        row.runs += outcome.runs
        row.converged_trials += int(outcome.converged)
        row.wrongly_touched |= {f"[{i}] {name}" for name in outcome.wrongly_touched}
        row.problems += [f"[{outcome.scenario}] {p}" for p in outcome.problems]
        row.runs_log += outcome.runs_log[-1:]
    return row


def kill_matrix(h: Harness) -> ScenarioOutcome:
    """SIGKILL after each mutating call k = 1..K of a fault-free run (K measured first)."""
    total = mutating_calls_per_run(h)
    outcomes = [kill_after_mutation(h, k) for k in range(1, total + 1)]
    kinds = Counter(o.faults.rpartition("(")[2].rstrip(")") for o in outcomes)
    calls = ", ".join(f"{n} {op}" for op, n in sorted(kinds.items()))
    faults = f"SIGKILL after mutating call k=1..{total} ({calls})"
    return combine("SIGKILL mid-run, then the next run", faults, outcomes)


def malformed_matrix(h: Harness, examples: int = 20) -> ScenarioOutcome:
    """The malformed-tags scenario on ``examples`` hypothesis-generated batches."""
    outcomes: list[ScenarioOutcome] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(key_specs(), min_size=4, max_size=10))
    def trial(specs: list[KeySpec]) -> None:
        outcomes.append(malformed_tags(h, specs))

    trial()
    keys = sum(len(o.world.keys) - 1 for o in outcomes if o.world is not None)
    return combine(
        "malformed and hand-edited tags",
        f"{keys} hypothesis-generated keys in {len(outcomes)} worlds",
        outcomes,
    )
