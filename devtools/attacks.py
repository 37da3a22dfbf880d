"""Attacks on the reclaim job, one per class of defect, each judged by AWS's final state.

Each function seeds a world in the emulator, runs the daemon through the AWS-faithful fault proxy
(key states, alias dates, paging, SigV4 signing time), plays the adversary (a clock step, a
lagging tagging index, a stray tag, a retry loop, an operator's restore, junk keys, an alias that
points elsewhere, a reload mid-run) and returns a :class:`~devtools.scenarios.ScenarioOutcome`:
whether the world ended as it must, and which keys were wrongly touched. The same functions back
``tests/test_attacks.py`` and rows of ``make reliability``.

Clock steps use libfaketime (Debian's ``faketime``) on the daemon process: its wall clock follows
a file the proxy rewrites mid-request, while its monotonic clock stays real, as an NTP step leaves
it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from daemon import spire
from devtools.faultproxy import MUTATING, key_id_of
from devtools.scenarios import (
    DAY,
    HOUR,
    PEER_DEAD,
    PEER_LIVE,
    REPO,
    SERVER,
    TD,
    Final,
    Harness,
    Role,
    Run,
    ScenarioOutcome,
    Seeder,
    judge,
)

__all__ = [
    "FAKETIME",
    "NoFaketime",
    "alias_elsewhere",
    "clock_step",
    "dry_run_reload",
    "inflated_denominator",
    "not_spire_key",
    "restored_keys",
    "retry_slicing",
    "stale_index",
]

_FAKETIME_PATHS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)
#: libfaketime's preload library, when installed.
FAKETIME = next((p for p in _FAKETIME_PATHS if os.path.exists(p)), None)

PEER_B = "7c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"  # a second dead server
PEER_C = "2f3e4d5c-6b7a-4988-8776-65544332211f"  # a live peer of the budget attack


class NoFaketime(RuntimeError):
    """libfaketime is not installed: the clock attacks cannot run."""


def faketime_env(clock: Path) -> dict[str, str]:
    """The environment that makes a process's wall clock follow ``clock`` (an offset such as
    ``+30d``, re-read on every call); its monotonic clock stays real."""
    if FAKETIME is None:
        raise NoFaketime("libfaketime is not installed (Debian/Ubuntu: apt-get install faketime)")
    return {
        "LD_PRELOAD": FAKETIME,
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def _mutations_on(h: Harness, arn: str, since: int = 0) -> list[str]:
    key = key_id_of(arn)
    return [
        e.operation
        for e in h.proxy.exchanges()[since:]
        if e.effective
        and e.operation in ("TagResources", "TagResource", "ScheduleKeyDeletion")
        and key in e.keys
    ]


# ------------------------------------------------------------------ 1. a clock step


def clock_step(h: Harness) -> ScenarioOutcome:
    """The host clock is 30 days ahead when a reclaim run starts and is stepped back (NTP) while
    the run's first request is answered 503 and retried. An HA pair: this server and a live peer,
    four keys each, stamped an hour ago; the share guard alone would let half of them go."""
    h.fresh()
    s = Seeder(h)
    for kid in ("x509-CA-A", "x509-CA-B", "JWT-Signer-A", "JWT-Signer-B"):
        s.key(f"live peer {kid}", Role.BYSTANDER, Final.UNCHANGED, server=PEER_LIVE, key_id=kid,
              last_update=HOUR)  # fmt: skip
        s.key(f"own {kid}", Role.BYSTANDER, Final.UNCHANGED, server=SERVER, key_id=kid,
              last_update=HOUR)  # fmt: skip
    world = s.done()
    outcome = ScenarioOutcome(
        "clock step mid-run",
        faults="host clock +30d at start, stepped back during a 503'd first request",
        world=world,
    )
    clock = h.workdir / "faketime"
    clock.write_text("+30d\n")
    h.proxy.before("GetResources", lambda _: clock.write_text("+0\n"), times=1)
    h.proxy.server_error("GetResources", times=1)
    run = outcome.record(h.finish(h.spawn("once", "--job", "reclaim", env=faketime_env(clock))))
    outcome.expect(run.code == 0, f"exit code {run.code}, expected 0")
    outcome.expect(h.proxy.count("ScheduleKeyDeletion") == 0, "a deletion after the clock step")
    retried = len(h.proxy.requests("GetResources")) >= 2
    outcome.expect(retried, "the first GetResources was not retried: the step was not exercised")
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ 2. a lagging index


def stale_index(h: Harness) -> ScenarioOutcome:
    """A server back after two weeks down stamps its key while the reclaim runs: KMS holds the
    fresh stamp, the tagging index still shows the old one."""
    h.fresh()
    s = Seeder(h)
    back = s.key("returning peer key (fresh in KMS, stale in the index)", Role.BYSTANDER,
                 Final.UNCHANGED, server=PEER_LIVE, key_id="x509-CA-A",
                 last_update=timedelta(minutes=1))  # fmt: skip
    s.key("dead peer key (stale everywhere)", Role.DEAD, Final.RECLAIMED, server=PEER_DEAD,
          key_id="x509-CA-A", last_update=20 * DAY)  # fmt: skip
    s.key("live peer key", Role.BYSTANDER, Final.UNCHANGED, server=PEER_B,
          key_id="x509-CA-A", last_update=HOUR)  # fmt: skip
    world = s.done()
    old = str(int((s.now - 20 * DAY).timestamp()))
    h.proxy.stale_index({back: {**h.emulator.tags(back), spire.TAG_LAST_UPDATE: old}})
    outcome = ScenarioOutcome(
        "stale tagging index",
        faults="GetResources lists a 20-day-old stamp, KMS a fresh one",
        world=world,
    )
    run = outcome.record(h.once("once", "--job", "reclaim"))
    outcome.expect(run.code == 0, f"exit code {run.code}, expected 0")
    outcome.expect("KMS's tags differ from the tagging index's" in run.out, "no re-read finding")
    outcome.expect(_mutations_on(h, back) == [], f"the returning key got {_mutations_on(h, back)}")
    outcome.expect(h.proxy.count("ListResourceTags") == 2, "not every candidate was re-read")
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ 3. not a SPIRE key


def _raw_key(
    s: Seeder, name: str, *, server: str, key_id: str, usage: str, spec: str, multi: bool = False
) -> str:
    """A key that carries SPIRE's tags (stale) but that SPIRE could not have made."""
    tags = spire.spire_tags(TD, server, key_id, int((s.now - 20 * DAY).timestamp()))
    arn = s.h.emulator.create_key(
        tags=tags, key_usage=usage, key_spec=spec, multi_region=multi, created_at=s.now - 90 * DAY
    )
    w = s.world
    w.keys[name], w.roles[name], w.finals[name] = arn, Role.BYSTANDER, Final.UNCHANGED
    w.owners[name] = (server, key_id)
    return arn


def not_spire_key(h: Harness) -> ScenarioOutcome:
    """A symmetric data key and a multi-Region key tagged with SPIRE's tags, stale."""
    h.fresh()
    s = Seeder(h)
    _raw_key(s, "symmetric data key with SPIRE's tags", server=PEER_DEAD, key_id="x509-CA-A",
             usage="ENCRYPT_DECRYPT", spec="SYMMETRIC_DEFAULT")  # fmt: skip
    _raw_key(s, "multi-Region key with SPIRE's tags", server=PEER_DEAD, key_id="x509-CA-B",
             usage="SIGN_VERIFY", spec="ECC_NIST_P256", multi=True)  # fmt: skip
    _raw_key(s, "HMAC key with SPIRE's tags", server=PEER_DEAD, key_id="JWT-Signer-A",
             usage="GENERATE_VERIFY_MAC", spec="HMAC_256")  # fmt: skip
    s.key("dead peer's SPIRE key", Role.DEAD, Final.RECLAIMED, server=PEER_DEAD,
          key_id="JWT-Signer-B", last_update=20 * DAY)  # fmt: skip
    s.key("live peer key", Role.BYSTANDER, Final.UNCHANGED, server=PEER_LIVE,
          key_id="x509-CA-A", last_update=HOUR)  # fmt: skip
    world = s.done()
    outcome = ScenarioOutcome(
        "not SPIRE's keys", faults="3 non-SIGN_VERIFY/multi-Region keys", world=world
    )
    run = outcome.record(h.once("once", "--job", "reclaim"))
    outcome.expect(run.code == 0, f"exit code {run.code}, expected 0")
    outcome.expect(run.out.count("finding  not_spire_key") == 3, "not every stray key reported")
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ 4. retries slice the budget


def retry_slicing(h: Harness, *, step_hours: int = 6, steps: int = 11) -> ScenarioOutcome:
    """Eight dying keys crossing the threshold six hours apart, a run every six hours taken in
    turn by two daemons (retries, restarts and peers alike), max_reclaims=2 per 48 h: at most two
    deletions in any 48 h, whoever runs. Time moves on through libfaketime and AWS's clock."""
    h.fresh()
    s = Seeder(h)
    ages = [14 * DAY - timedelta(hours=step_hours * i) + timedelta(minutes=5) for i in range(8)]
    for i, age in enumerate(ages):
        s.key(f"dying key {i} (stale at hour {step_hours * i})", Role.DEAD, Final.UNCHANGED,
              server=f"dead-server-{i}", key_id="x509-CA-A", last_update=age)  # fmt: skip
    s.key("live peer key", Role.BYSTANDER, Final.UNCHANGED, server=PEER_C, key_id="x509-CA-A",
          last_update=timedelta(minutes=1))  # fmt: skip
    world = s.done()
    outcome = ScenarioOutcome(
        "retries and peers slicing the budget",
        faults=f"{steps} runs {step_hours}h apart by 2 daemons, max_reclaims=2 per 48h",
        world=world,
    )
    clock = h.workdir / "faketime"
    scheduled: dict[str, int] = {}
    for step in range(steps):
        hours = step * step_hours
        clock.write_text(f"+{hours}h\n")
        h.emulator.clock_skew = timedelta(hours=hours)
        before = len(h.proxy.successes("ScheduleKeyDeletion"))
        server = SERVER if step % 2 == 0 else PEER_LIVE
        proc = h.spawn(
            "once", "--job", "reclaim", server_id=server, env=faketime_env(clock),
            reclaim={"max_reclaims": 2, "max_reclaim_fraction": 1.0},
        )  # fmt: skip
        run = outcome.record(h.finish(proc))
        outcome.expect(run.code in (0, 4), f"hour {hours}: exit code {run.code}")
        for exchange in h.proxy.successes("ScheduleKeyDeletion")[before:]:
            name = world.name_of(str(exchange.body.get("KeyId")))
            if name is not None and name not in scheduled:
                scheduled[name] = hours
    times = sorted(scheduled.values())
    for t in times:
        in_window = [u for u in times if t <= u < t + 48]
        outcome.expect(len(in_window) <= 2, f"{len(in_window)} deletions within 48h of hour {t}")
    outcome.expect(len(scheduled) >= 4, f"only {len(scheduled)} reclaimed over {steps} runs")
    for name in scheduled:
        world.expect(name, final=Final.RECLAIMED)
    outcome.faults += f": deletions at hours {times}"
    outcome.absorb(judge(h, world, stamped_by=h.proxy.aws_time()))
    return outcome


# ------------------------------------------------------------------ 5. restored keys


def restored_keys(h: Harness) -> ScenarioOutcome:
    """Twelve keys reclaimed five days ago and restored by an operator (CancelKeyDeletion and
    EnableKey, not re-tagged), and twelve left marked an hour ago by an interrupted run, with
    max_reclaims=3: no restored key is deleted again, and the interrupted ones go three at most."""
    h.fresh()
    s = Seeder(h)
    for i in range(12):
        s.key(f"restored key {i}", Role.BYSTANDER, Final.UNCHANGED, server=PEER_DEAD,
              key_id=f"bundle-acme-r{i}", last_update=20 * DAY, active="false",
              marked=5 * DAY)  # fmt: skip
    interrupted = [
        s.key(
            f"interrupted reclaim {i}",
            Role.DEAD,
            Final.MARKED,
            server=PEER_B,
            key_id=f"bundle-acme-i{i}",
            last_update=20 * DAY,
            active="false",
            marked=HOUR - timedelta(minutes=i),
        )
        for i in range(12)
    ]
    s.key("live peer key", Role.BYSTANDER, Final.UNCHANGED, server=PEER_LIVE,
          key_id="x509-CA-A", last_update=HOUR)  # fmt: skip
    world = s.done()
    outcome = ScenarioOutcome(
        "restored keys and interrupted reclaims",
        faults="12 keys restored after a reclaim, 12 marks of an interrupted run; max_reclaims=3",
        world=world,
    )
    run = outcome.record(h.once("once", "--job", "reclaim", reclaim={"max_reclaims": 3}))
    outcome.expect(run.code == 4, f"exit code {run.code}, expected 4 (budget)")
    outcome.expect(run.out.count("finding  restored_key") == 12, "restored keys not all reported")
    done = [a for a in interrupted if h.emulator.key_state(a) == "PendingDeletion"]
    outcome.expect(len(done) == 3, f"{len(done)} interrupted reclaims completed, expected 3")
    # The oldest marks first: interrupted 0, 1, 2 (marked 60, 59, 58 minutes ago).
    for index in range(3):
        world.expect(f"interrupted reclaim {index}", final=Final.RECLAIMED)
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ 6. an inflated denominator


def inflated_denominator(h: Harness) -> ScenarioOutcome:
    """Two of three servers dead, max_reclaim_fraction=0.5, and thirty junk keys (only
    spire-server-td and spire-active=true) plus ten fresh keys of invented servers, pending
    deletion: none of them may make two of three look like a small share."""
    h.fresh()
    s = Seeder(h)
    for server, label in ((PEER_DEAD, "A"), (PEER_B, "B")):
        s.key(f"dead server {label} key", Role.BYSTANDER, Final.UNCHANGED, server=server,
              key_id="x509-CA-A", last_update=20 * DAY)  # fmt: skip
    s.key("live server key", Role.BYSTANDER, Final.UNCHANGED, server=PEER_LIVE,
          key_id="x509-CA-A", last_update=HOUR)  # fmt: skip
    junk = {spire.TAG_TRUST_DOMAIN: TD, spire.TAG_ACTIVE: "true"}
    for _ in range(30):
        h.emulator.create_key(tags=junk, created_at=s.now - 90 * DAY)
    for i in range(10):
        s.key(f"ghost server {i} key (pending)", Role.BYSTANDER, Final.UNCHANGED,
              server=f"ghost-{i}", key_id="x509-CA-A", last_update=HOUR, pending=True)  # fmt: skip
    world = s.done()
    outcome = ScenarioOutcome(
        "inflated denominator",
        faults="30 junk keys, 10 pending keys of invented servers; 2 of 3 servers dead",
        world=world,
    )
    run = outcome.record(h.once("once", "--job", "reclaim", reclaim={"max_reclaim_fraction": 0.5}))
    outcome.expect(run.code == 4, f"exit code {run.code}, expected 4 (blast radius)")
    outcome.expect("2 of the trust domain's 3 servers" in run.out, "the share is not 2 of 3")
    outcome.expect(h.proxy.count(MUTATING) == 0, "a write despite the guard")
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ 7. our alias on a dead key


def alias_elsewhere(h: Harness) -> ScenarioOutcome:
    """This server's alias points to a dead peer's key and was last updated 15 days ago: the
    refresh must not bump it (that would keep the dead key alias-fresh forever), and the reclaim
    takes the key."""
    h.fresh()
    s = Seeder(h)
    s.key("own x509-CA-A (serving)", Role.SERVING, Final.FRESH, server=SERVER,
          key_id="x509-CA-A", last_update=3 * DAY, alias=True)  # fmt: skip
    dead = s.key("dead peer key behind this server's alias", Role.DEAD, Final.RECLAIMED,
                 server=PEER_DEAD, key_id="JWT-Signer-A", last_update=20 * DAY)  # fmt: skip
    ours = spire.alias_name(TD, SERVER, "JWT-Signer-A")
    h.emulator.create_alias(ours, dead)
    h.proxy.set_alias_date(ours, s.now - 15 * DAY, created=s.now - 90 * DAY)
    s.key("live peer key", Role.BYSTANDER, Final.UNCHANGED, server=PEER_LIVE,
          key_id="x509-CA-A", last_update=HOUR)  # fmt: skip
    world = s.done()
    outcome = ScenarioOutcome(
        "this server's alias on a dead peer's key",
        faults="alias last updated 15 days ago",
        world=world,
    )
    run = outcome.record(h.once("once"))
    outcome.expect(run.code == 0, f"exit code {run.code}, expected 0")
    bumped = [b for b in h.proxy.requests("UpdateAlias") if b.get("AliasName") == ours]
    outcome.expect(bumped == [], "the alias on the dead key was refreshed")
    outcome.expect("alias_points_elsewhere" in run.out, "no alias_points_elsewhere finding")
    outcome.absorb(judge(h, world))
    return outcome


# ------------------------------------------------------------------ 8. a reload turns dry run on


def dry_run_reload(h: Harness) -> ScenarioOutcome:
    """``systemctl reload`` with ``dry_run = true`` while a reclaim of three keys is under way
    (deletions paced two seconds apart): the writes not yet sent are not sent."""
    h.fresh()
    s = Seeder(h)
    s.key("own key", Role.SERVING, Final.FRESH, server=SERVER, key_id="x509-CA-A",
          last_update=3 * DAY, alias=True)  # fmt: skip
    dead = [
        s.key(
            f"dead peer {kid}",
            Role.DEAD,
            Final.MARKED,
            server=PEER_DEAD,
            key_id=kid,
            last_update=20 * DAY,
        )
        for kid in ("x509-CA-A", "x509-CA-B", "JWT-Signer-A")
    ]
    s.key("live peer key", Role.BYSTANDER, Final.UNCHANGED, server=PEER_LIVE,
          key_id="x509-CA-A", last_update=HOUR)  # fmt: skip
    world = s.done()
    outcome = ScenarioOutcome(
        "a reload turning dry run on mid-run",
        faults="SIGHUP with dry_run = true after the first of 3 deletions",
        world=world,
    )
    settings: dict[str, object] = {
        "reclaim": {"start_delay": "1s", "interval": "1h", "jitter": 0},
        "aws": {"mutating_calls_per_second": 0.5},
    }
    config = h.config(**settings)  # type: ignore[arg-type]
    box: dict[str, int] = {}

    def reload_dry(_: Mapping[str, object]) -> None:
        dry = h.config(top={"dry_run": True}, **settings)  # type: ignore[arg-type]
        config.write_text(dry.read_text())
        os.kill(box["pid"], signal.SIGHUP)

    h.proxy.after("ScheduleKeyDeletion", reload_dry, nth=1)
    log = h.workdir / "daemon.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(config)],
            cwd=REPO,
            env={**h.subprocess_env(), "SPIRE_KMS_RECONCILER_METRICS__ENABLED": "false"},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        box["pid"] = process.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"reclaim_finished"' not in log.read_text():
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    run = outcome.record(Run(code, log.read_text(), ""))
    events = [json.loads(line) for line in run.out.splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    outcome.expect("reloaded" in names, "the reload was not applied")
    outcome.expect("reclaim_finished" in names, "no reclaim_finished")
    done = [a for a in dead if h.emulator.key_state(a) == "PendingDeletion"]
    outcome.expect(len(done) == 1, f"{len(done)} deletions, expected 1 (before the reload)")
    for arn in done:
        world.expect(world.name_of(arn) or "", final=Final.RECLAIMED)
    held = [
        e for e in events if e.get("event") == "action" and "dry_run is on" in str(e.get("error"))
    ]
    outcome.expect(len(held) == 2, f"{len(held)} deletions held back, expected 2")
    outcome.absorb(judge(h, world))
    return outcome
