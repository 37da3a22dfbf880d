"""``make fleet``: a fleet of SPIRE servers and daemons on a simulated clock, its invariants checked
after every step.

What runs for real: the daemon's jobs (``refresh_once`` and ``reclaim_once`` of
:mod:`daemon.jobs`: observe, plan, guards, execute) on its own :class:`~daemon.aws.client.AwsApi`,
with its settings loaded by ``load_settings``, its retry rule (``daemon.retries.retry_delay``)
and one process per host with the jobs' state kept between runs, lost when the process dies.
Every daemon talks to one in-memory AWS account (:mod:`devtools.simaws`) that keeps AWS's
documented rules: key states, an eventually consistent tagging index, SigV4's 5-minute signing
window, paging, and a share of simulated time for each call, so that the runs of many daemons,
the SPIRE servers' own calls and the world's events interleave.

Around them, the world: SPIRE servers in several trust domains, in SPIRE's tag mode or its older
alias mode, each keeping four keys, stamping them (tag mode) and refreshing their aliases every
6 hours, rotating keys every few days (and now and then losing the deletion of the old key, as
SPIRE's in-memory queue does). Servers are decommissioned, go down with their host for hours or
weeks and come back, lose their SPIRE process while the daemon stays, or lose their daemon while
SPIRE stays; a rack of servers of one trust domain dies at once; operators restore keys a daemon
scheduled for deletion. Faults from the failure matrix strike at random: throttling, DescribeKey
failures, responses without a ``Date``, processes killed right after a write, host clocks stepped
for minutes or hours, some in the middle of a run.

Invariants, checked at every write and every simulated hour:

* **no wrong deletion**: no key is marked ``spire-active=false`` or scheduled for deletion by a
  daemon if AWS showed it alive when the daemon last read it (a stamp, an alias update or a
  creation within ``stale_after``), or if it is not SPIRE's (shape), protected, or restored by an
  operator and not re-tagged since;
* **a stamp means the server is alive**: no daemon stamps, migrates or refreshes an alias for a
  SPIRE server that has been down for more than a minute;
* **every dead key is reclaimed in time**: a key whose last sign of life in AWS is older than
  ``stale_after`` + ``reclaim.interval`` (with its jitter) + the retry backoff cap + the index lag
  is pending deletion, unless a guard (budget or blast radius) held keys of its trust domain back
  within the last interval;
* **the budget holds**: in no window of ``reclaim.interval`` do the daemons of a trust domain
  schedule more than ``max_reclaims`` of its keys;
* **calls per run stay within the bounds** stated in ``bench/README.md``.

What it does not exercise: HTTP, botocore (retries, credentials, the ``Date`` parsing of real
responses), APScheduler (runs are due on the simulated clock; clock steps move the host's wall
clock, which the jobs and the SigV4 window see, not the scheduler), the SPIRE health endpoint
(the probe reads the server's state), SIGHUP reloads, SPIRE's own stale-key disposal, and AWS's
rate limits (throttling is a random fault). The matrix (``make reliability``) and the attacks
(``tests/test_attacks.py``) run those for real against moto through the fault proxy.

    python -m devtools.fleet                 # 100 servers, 5 trust domains, 60 days
    python -m devtools.fleet --short         # the CI version: 40 servers, 2 trust domains, 40 days
    python -m devtools.fleet --seed 7 --servers 40 --days 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog

from daemon import spire
from daemon.aws.client import AwsApi
from daemon.jobs import Context, JobState, reclaim_once, reclaim_policy, refresh_once
from daemon.model import Job, Liveness, ObservedKey, Refusal, RunReport, Verdict
from daemon.plan import ReclaimPolicy, needs_state
from daemon.retries import RETRY_CAP, needs_retry, retry_delay
from daemon.settings import Settings, load_settings
from devtools import defects
from devtools.simaws import (
    CURRENT_RUN,
    Faults,
    Killed,
    RunLog,
    SimAccount,
    SimKey,
    SimKms,
    SimTagging,
    Write,
)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
START = datetime(2026, 1, 1, tzinfo=UTC)
KEY_IDS = ("x509-CA-A", "x509-CA-B", "JWT-Signer-A", "JWT-Signer-B")
SPIRE_KEEPALIVE = timedelta(hours=6)
RESTART_AFTER = timedelta(seconds=5)  # systemd's RestartSec
#: A stamp this long after its server died breaks "a stamp means the server is alive" (a death
#: between the daemon's last probe and its write is a race no probe can close).
STAMP_GRACE = timedelta(minutes=1)
ENV = "SPIRE_KMS_RECONCILER_"


@dataclass(frozen=True)
class FleetConfig:
    """The fleet and its faults."""

    servers: int = 100
    trust_domains: int = 5
    days: float = 60
    seed: int = 1
    alias_mode_share: float = 0.3  # SPIRE servers before v1.15.2 (alias mode)
    daemon_share: float = 0.85  # hosts that run the daemon beside SPIRE
    index_lag: timedelta = timedelta(minutes=5)
    call_latency: tuple[float, float] = (0.02, 0.15)  # seconds, uniform
    throttle_rate: float = 0.02
    describe_failure_rate: float = 0.01
    drop_date_rate: float = 0.002
    kill_rate: float = 0.05  # share of reclaim runs whose process dies after a few writes
    clock_faults_per_host: float = 1.0
    mid_run_step_rate: float = 0.05  # share of reclaim runs whose host clock steps mid-run
    rack_failure: int = 4  # servers of one trust domain decommissioned at once

    @classmethod
    def short(cls, seed: int = 1) -> FleetConfig:
        """The CI version: under a minute, and still large enough that each defect class the
        invariants guard against shows up (tests/test_fleet.py checks that it does)."""
        return cls(servers=40, trust_domains=2, days=40, seed=seed)


# --- the simulated clock --------------------------------------------------------------------------


class InlineExecutor(ThreadPoolExecutor):
    """Runs ``asyncio.to_thread`` work inline: no thread may run while simulated time stands."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class Clock:
    """Discrete events on simulated time: callbacks, and tasks sleeping on simulated seconds."""

    def __init__(self, account: SimAccount) -> None:
        self.account = account
        self._heap: list[tuple[datetime, int, Any]] = []
        self._seq = itertools.count()
        self.stopped = False  # set to end the run early

    @property
    def now(self) -> datetime:
        """Simulated time: AWS's."""
        return self.account.now

    def at(self, when: datetime, event: Callable[[], None]) -> None:
        """Run ``event`` at ``when``."""
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), event))

    def after(self, delay: timedelta, event: Callable[[], None]) -> None:
        """Run ``event`` after ``delay``."""
        self.at(self.now + delay, event)

    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass for the calling task."""
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.now + timedelta(seconds=seconds), next(self._seq), future))
        await future

    async def run(self, until: datetime) -> None:
        """Process every event up to ``until``, letting tasks run between them."""
        loop = asyncio.get_running_loop()
        while self._heap and self._heap[0][0] <= until and not self.stopped:
            when, _, item = heapq.heappop(self._heap)
            self.account.now = when
            if isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_result(None)
            else:
                item()
            await _settle(loop)
        self.account.now = until


async def _settle(loop: asyncio.AbstractEventLoop) -> None:
    """Yield until every task waits on simulated time (or has finished): nothing is ready to
    run and no real timer is pending (the daemon's rate limiter may sleep a few nanoseconds)."""
    busy = True
    while busy:
        await asyncio.sleep(0)
        busy = bool(loop._ready or loop._scheduled)  # type: ignore[attr-defined]


# --- the world ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Server:
    """A SPIRE server, its host and (maybe) the daemon beside it."""

    sid: str
    td: str
    mode: str  # "tag" (SPIRE >= 1.15.2) or "alias"
    has_daemon: bool
    #: the daemon's refresh.refresh_aliases (some operators turn it off)
    refresh_aliases: bool = True
    alive: bool = False  # the SPIRE process runs
    host_up: bool = True
    daemon_installed: bool = True
    decommissioned: bool = False
    offset: timedelta = timedelta(0)  # the host clock's error
    slots: dict[str, SimKey] = field(default_factory=dict)  # the keys SPIRE uses
    down_since: datetime | None = None
    generation: int = 0  # SPIRE's process incarnation (its timers check it)
    daemon: DaemonProcess | None = None

    def alias(self, kid: str) -> str:
        """SPIRE's alias name for one of its key IDs."""
        return spire.alias_name(self.td, self.sid, kid)

    def host_now(self, now: datetime) -> datetime:
        """The host's wall clock."""
        return now + self.offset


@dataclass
class Figures:
    """What the simulation counts and prints."""

    servers: int = 0
    trust_domains: int = 0
    days: float = 0
    daemons: int = 0
    keys: int = 0
    refresh_runs: int = 0
    reclaim_runs: int = 0
    refused_runs: Counter[str] = field(default_factory=Counter)
    reclaimed: int = 0
    stamps: int = 0
    max_reclaim_latency_hours: float = 0.0
    held_by_guard: int = 0
    no_daemon_left: int = 0
    budget_high_water: int = 0
    max_calls: dict[str, int] = field(default_factory=dict)
    max_calls_over_bound: int = 0
    kills: int = 0
    throttled: int = 0
    clock_steps: int = 0
    restores: int = 0
    comebacks: int = 0
    lost_races: int = 0
    kept_by_reread: set[str] = field(default_factory=set)
    restored_left_alone: set[str] = field(default_factory=set)
    unannounced: int = 0
    wrongly_touched: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every invariant held."""
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-friendly values (sets as their sizes)."""
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            out[name] = len(value) if isinstance(value, set) else value
        out["refused_runs"] = dict(self.refused_runs)
        return out


class Fleet:
    """The world, the daemons and the invariants."""

    def __init__(self, config: FleetConfig, *, fail_fast: bool = False) -> None:
        self.config = config
        self.fail_fast = fail_fast
        self.rng = random.Random(config.seed)
        self.account = SimAccount(START, random.Random(config.seed + 1), index_lag=config.index_lag)
        self.clock = Clock(self.account)
        self.account.wait = self._latency
        self.account.on_write = self._on_write
        self.figures = Figures(
            servers=config.servers, trust_domains=config.trust_domains, days=config.days
        )
        self.tds = [f"td{i}.example.org" for i in range(config.trust_domains)]
        self.servers: dict[str, Server] = {}
        self.settings: dict[str, Settings] = {}
        self.policy = ReclaimPolicy()
        #: per trust domain: when daemons scheduled its keys, and when a guard last held keys back
        self.scheduled: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        self.held_at: dict[str, datetime] = {}
        self.reclaimed_at: dict[str, datetime] = {}  # the last reclaim run of each trust domain
        self.overdue: set[str] = set()
        #: decommissioned servers whose reclaimed keys an operator restores, a while after
        self.restore_later: set[Server] = set()
        self.dead_since: dict[str, datetime] = {}

    # --- simulated time for calls -------------------------------------------------------------

    async def _latency(self) -> None:
        low, high = self.config.call_latency
        await self.clock.sleep(self.rng.uniform(low, high))

    # --- setup ----------------------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def build(self) -> None:
        """Create the servers, their keys as of the start, junk keys, and the events to come."""
        cfg = self.config
        # The last trust domain is an HA pair (two servers), where half the servers is one:
        # the fraction guard alone cannot tell a clock step from two dead servers there.
        pair = cfg.trust_domains > 1 and cfg.servers >= 5 * cfg.trust_domains
        for index in range(cfg.servers):
            if pair:
                td = self.tds[-1] if index < 2 else self.tds[index % (len(self.tds) - 1)]
            else:
                td = self.tds[index % len(self.tds)]
            server = Server(
                self._uuid(),
                td,
                "alias" if self.rng.random() < cfg.alias_mode_share else "tag",
                self.rng.random() < cfg.daemon_share,
            )
            server.refresh_aliases = self.rng.random() >= 0.3
            self.servers[server.sid] = server
        self._plan_lives()
        for server in self.servers.values():
            age = timedelta(days=self.rng.uniform(20, 90))
            self._start_spire(server, created=START - age)
            if server.has_daemon:
                self.figures.daemons += 1
                self._start_daemon(server)
        for td in self.tds:
            self._junk(td)
        self.clock.after(HOUR, self._hourly)

    def _junk(self, td: str) -> None:
        """Keys that carry SPIRE's tags but must never be reclaimed."""
        old = spire.format_last_update(int((START - 40 * DAY).timestamp()))
        ghost = self._uuid()
        base = spire.spire_tags(td, ghost, "x509-CA-A", 0) | {spire.TAG_LAST_UPDATE: old}
        for shape in (
            {"usage": "ENCRYPT_DECRYPT", "spec": "SYMMETRIC_DEFAULT"},
            {"multi_region": True},
        ):
            key = self.account.create_key(None, base, **shape)
            key.created = START - 60 * DAY
        protected = self.account.create_key(None, base | {"spire-protect": "true"})
        protected.created = START - 60 * DAY
        partial = {spire.TAG_TRUST_DOMAIN: td, spire.TAG_ACTIVE: spire.ACTIVE_TRUE}
        junk = self.account.create_key(None, partial)
        junk.created = START - 60 * DAY

    def _plan_lives(self) -> None:
        """Each server's fate, drawn once; rack failures; clock faults per host."""
        cfg = self.config
        end = cfg.days * DAY
        servers = list(self.servers.values())
        for server in servers:
            when = START + self.rng.uniform(0.05, 0.8) * end
            fate = self.rng.random()
            if fate < 0.10:
                self.clock.at(when, partial(self._decommission, server))
            elif fate < 0.18:
                down = timedelta(days=self.rng.uniform(15, 24))
                self.clock.at(when, partial(self._outage, server, down))
            elif fate < 0.26 and server.has_daemon:
                # Back just after its keys went stale, before a reclaim took them: they look
                # dead in the tagging index while its daemon stamps them again (with alias
                # refresh off, the stamp is the only sign of life), and operators run a reclaim
                # on peers meanwhile.
                server.refresh_aliases = False
                self.clock.at(when, partial(self._outage, server, None, rush=True))
            elif fate < 0.38:
                down = timedelta(hours=self.rng.uniform(1, 72))
                self.clock.at(when, partial(self._outage, server, down))
            elif fate < 0.46:
                down = timedelta(hours=self.rng.uniform(1, 20 * 24))
                self.clock.at(when, partial(self._spire_crash, server, down))
            elif fate < 0.54 and server.has_daemon:
                down = timedelta(days=self.rng.uniform(1, 25))
                self.clock.at(when, partial(self._daemon_removed, server, down))
            for _ in range(self._poisson(cfg.clock_faults_per_host)):
                at = START + self.rng.uniform(0, 1) * end
                self.clock.at(at, partial(self._clock_fault, server))
        racks = [td for td in self.tds if sum(s.td == td for s in servers) >= 2 * cfg.rack_failure]
        for number, td in enumerate(racks[:2]):
            rack = [s for s in servers if s.td == td][: cfg.rack_failure]
            if cfg.rack_failure:
                when = START + (0.2 + 0.3 * number) * end
                self.clock.at(when, partial(self._fail_rack, rack))

    def _fail_rack(self, rack: list[Server]) -> None:
        """Servers of one trust domain die at once: more dead keys than one window's budget.
        Once they are stale, alerted operators run a reclaim on several peers within minutes."""
        for member in rack:
            if not member.decommissioned:
                self._decommission(member)
        delay = self.policy.stale_after + timedelta(hours=self.rng.uniform(0, 6))
        self.clock.after(delay, lambda: self._rush(rack[0].td, peers=3))

    def _rush(self, td: str, peers: int) -> None:
        """Operators run ``once --job reclaim`` on a few peer hosts, minutes apart."""
        live = [
            s.daemon
            for s in self.servers.values()
            if s.td == td and s.daemon is not None and s.daemon.alive
        ]
        for daemon in self.rng.sample(live, min(peers, len(live))):
            delay = timedelta(seconds=self.rng.uniform(20, 240))
            self.clock.after(delay, partial(daemon.trigger, Job.RECLAIM))

    def _poisson(self, mean: float) -> int:
        count, threshold, product = 0, math.exp(-mean), self.rng.random()
        while product > threshold:
            count += 1
            product *= self.rng.random()
        return count

    # --- SPIRE servers --------------------------------------------------------------------------

    def _signs(self, server: Server) -> bool:
        """Whether AWS accepts the host's signatures (its clock within SigV4's window)."""
        return abs(server.offset) <= timedelta(minutes=5)

    def _start_spire(self, server: Server, created: datetime | None = None) -> None:
        """SPIRE starts: it finds its keys (tags, then aliases), creates what is missing."""
        account = self.account
        server.alive, server.down_since = True, None
        server.generation += 1
        for kid in KEY_IDS:
            key = server.slots.get(kid)
            alias = account.aliases.get(server.alias(kid))
            target = account.keys.get(alias.target) if alias else None
            if target is not None and target.state == "Enabled":
                key = target
            if key is None or account.find(key.key_id) is None or key.state != "Enabled":
                key = self._new_key(server, kid)
                if created is not None:
                    key.created = created
            elif server.mode == "tag" and key.tags.get(spire.TAG_ACTIVE) != spire.ACTIVE_TRUE:
                # SPIRE's migration: an alias entry its tag discovery did not find gets all five
                # tags (a key the daemon marked and an operator restored is SPIRE's again).
                account.tag(key, self._spire_tags(server, kid))
            server.slots[kid] = key
        gen = server.generation
        first = self.rng.uniform(0, 1) * SPIRE_KEEPALIVE if created else SPIRE_KEEPALIVE
        self.clock.after(first, lambda: self._keepalive(server, gen))
        for kid in KEY_IDS:
            rotate = timedelta(days=self.rng.uniform(5, 9)) * (self.rng.random() if created else 1)
            self.clock.after(rotate, partial(self._rotate, server, kid, gen))

    def _spire_tags(self, server: Server, kid: str) -> dict[str, str]:
        stamp = int(server.host_now(self.clock.now).timestamp())
        return spire.spire_tags(server.td, server.sid, kid, stamp)

    def _new_key(self, server: Server, kid: str) -> SimKey:
        """GenerateKey: CreateKey (tagged in tag mode), then CreateAlias or UpdateAlias."""
        tags = self._spire_tags(server, kid) if server.mode == "tag" else None
        key = self.account.create_key(server.sid, tags)
        self.account.set_alias(server.alias(kid), key)
        self.figures.keys += 1
        return key

    def _keepalive(self, server: Server, gen: int) -> None:
        """Every 6 hours: stamp the cached keys (tag mode) and refresh the aliases (both)."""
        if gen != server.generation or not server.alive:
            return
        if self._signs(server):
            stamp = {spire.TAG_LAST_UPDATE: self._spire_tags(server, "x")[spire.TAG_LAST_UPDATE]}
            for kid, key in server.slots.items():
                if key.state != "Enabled":
                    continue
                if server.mode == "tag":
                    self.account.tag(key, stamp)
                alias = self.account.aliases.get(server.alias(kid))
                if alias is not None and alias.target == key.key_id:
                    self.account.set_alias(alias.name, key)
        self.clock.after(SPIRE_KEEPALIVE, lambda: self._keepalive(server, gen))

    def _rotate(self, server: Server, kid: str, gen: int) -> None:
        """A key ID gets a new key; the old one is queued for deletion (or the queue loses it)."""
        if gen != server.generation or not server.alive:
            return
        if self._signs(server):
            old = server.slots.get(kid)
            server.slots[kid] = self._new_key(server, kid)
            if old is not None and old.state == "Enabled" and self.rng.random() > 0.15:
                self.account.schedule(old, 7)
        self.clock.after(
            timedelta(days=self.rng.uniform(5, 9)), lambda: self._rotate(server, kid, gen)
        )

    def _stop_spire(self, server: Server) -> None:
        if server.alive:
            server.alive, server.down_since = False, self.clock.now
            server.generation += 1

    def _decommission(self, server: Server) -> None:
        self._stop_spire(server)
        server.decommissioned = True
        self._host_down(server)
        for key in server.slots.values():
            self.dead_since.setdefault(key.key_id, self.clock.now)
        if self.rng.random() < 0.25:  # an operator restores what the daemons reclaim
            self.restore_later.add(server)

    def _documented_mark_window(self) -> timedelta:
        """How recent a mark the daemon completes, as docs/operations.md tells operators:
        reclaim.interval plus its jitter (read from the settings, not the daemon's policy)."""
        settings = next(iter(self.settings.values()), None)
        if settings is None:
            return 48 * HOUR * 1.1
        return settings.reclaim.interval * (1 + settings.reclaim.jitter)

    def config_interval(self) -> timedelta:
        """reclaim.interval as the daemons are configured."""
        return next(iter(self.settings.values())).reclaim.interval if self.settings else 48 * HOUR

    def _outage(self, server: Server, down: timedelta | None, *, rush: bool = False) -> None:
        """The host goes down for ``down`` (None: until minutes after its keys went stale)."""
        if server.decommissioned:
            return
        self._stop_spire(server)
        self._host_down(server)
        if down is None:
            last = max(self.account.freshness(k) for k in server.slots.values())
            back = last + self.policy.stale_after + timedelta(minutes=self.rng.uniform(5, 60))
            down = max(HOUR, back - self.clock.now)
        self.clock.after(down, lambda: self._comeback(server, host=True))
        if rush:
            self.clock.after(down, lambda: self._rush(server.td, peers=2))

    def _spire_crash(self, server: Server, down: timedelta) -> None:
        if server.decommissioned or not server.alive:
            return
        self._stop_spire(server)
        self.clock.after(down, lambda: self._comeback(server, host=False))

    def _comeback(self, server: Server, host: bool) -> None:
        """SPIRE back; an operator restores its reclaimed keys first, most of the time."""
        if server.decommissioned:
            return
        self.figures.comebacks += 1
        if self.rng.random() < 0.6:
            self._restore(server)
        self._start_spire(server)
        if host:
            server.host_up = True
            if server.has_daemon and server.daemon_installed:
                self._start_daemon(server)

    def _restore(self, server: Server) -> None:
        """An operator restores the server's keys the daemons scheduled, as docs/operations.md
        says: CancelKeyDeletion and EnableKey; when the mark is younger than the reclaim
        interval (an interrupted reclaim looks the same), also re-tag the key active and fresh,
        or protect it."""
        now = self.clock.now
        for key in server.slots.values():
            mark = spire.parse_last_update(key.tags.get(spire.TAG_MARKED_AT))
            if key.state != "PendingDeletion" or mark is None:
                continue
            self.account.cancel_and_enable(key)
            self.figures.restores += 1
            if now - datetime.fromtimestamp(mark, UTC) <= self._documented_mark_window():
                if self.rng.random() < 0.5:
                    stamp = spire.format_last_update(int(now.timestamp()))
                    self.account.tag(
                        key, {spire.TAG_ACTIVE: spire.ACTIVE_TRUE, spire.TAG_LAST_UPDATE: stamp}
                    )
                else:
                    self.account.tag(key, {"spire-protect": "true"})

    def _daemon_removed(self, server: Server, down: timedelta) -> None:
        if server.decommissioned or server.daemon is None:
            return
        server.daemon_installed = False
        server.daemon.stop()

        def back() -> None:
            server.daemon_installed = True
            if server.host_up and not server.decommissioned:
                self._start_daemon(server)

        self.clock.after(down, back)

    def _host_down(self, server: Server) -> None:
        server.host_up = False
        if server.daemon is not None:
            server.daemon.stop()

    def _clock_fault(self, server: Server) -> None:
        """The host clock steps away (minutes to days), and NTP steps it back later."""
        if server.offset:
            return
        self.figures.clock_steps += 1
        size = timedelta(minutes=self.rng.choice([2, 10, 90, 6 * 60, 3 * 24 * 60]))
        server.offset = size if self.rng.random() < 0.5 else -size
        self.clock.after(
            timedelta(minutes=self.rng.uniform(1, 360)),
            lambda: setattr(server, "offset", timedelta(0)),
        )

    # --- daemons --------------------------------------------------------------------------------

    def _daemon_settings(self, server: Server) -> Settings:
        settings = self.settings.get(server.sid)
        if settings is None:
            settings = load_settings(
                None,
                env={
                    f"{ENV}TRUST_DOMAIN": server.td,
                    f"{ENV}KEY_IDENTIFIER_VALUE": server.sid,
                    f"{ENV}REGION": "us-east-1",
                    # The probe is the simulation's (the server's state); settings need one of them.
                    f"{ENV}ASSUME_SPIRE_ALIVE": "true",
                    # Some operators turn alias refresh off: then a stamp, which the tagging index
                    # shows only after a lag, is the server's only sign of life until SPIRE's own
                    # alias refresh, 6 hours after it starts.
                    f"{ENV}REFRESH__REFRESH_ALIASES": str(server.refresh_aliases).lower(),
                },
            )
            self.settings[server.sid] = settings
            self.policy = reclaim_policy(settings)
        return settings

    def _start_daemon(self, server: Server) -> None:
        if server.daemon is not None:
            server.daemon.stop()
        server.daemon = DaemonProcess(self, server, self._daemon_settings(server))
        server.daemon.start()

    # --- invariants -----------------------------------------------------------------------------

    def violation(self, text: str, key: SimKey | None = None) -> None:
        """Record a broken invariant."""
        self.figures.violations.append(f"{self.clock.now:%Y-%m-%d %H:%M:%S} {text}")
        if key is not None:
            self.figures.wrongly_touched.add(key.key_id)
        if self.fail_fast:
            self.clock.stopped = True

    def _on_write(self, write: Write) -> None:
        key, now = write.key, self.clock.now
        marks = write.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_FALSE
        if write.operation == "ScheduleKeyDeletion" or marks:
            self._check_reclaim(write)
        elif spire.TAG_LAST_UPDATE in write.tags or write.operation == "UpdateAlias":
            self.figures.stamps += 1
            owner = self.servers.get(write.who)
            down = owner.down_since if owner is not None and not owner.alive else None
            if key.owner != write.who:
                self.violation(f"daemon {write.who[:8]} wrote for another server's key", key)
            elif down is not None and now - down > STAMP_GRACE:
                self.violation(
                    f"daemon {write.who[:8]} stamped for its SPIRE server, down since "
                    f"{down:%Y-%m-%d %H:%M}",
                    key,
                )
        if write.operation == "ScheduleKeyDeletion":
            self._count_budget(key)

    def _check_reclaim(self, write: Write) -> None:
        key, now = write.key, self.clock.now
        what = "scheduled" if write.operation == "ScheduleKeyDeletion" else "marked"
        if key.owner is None:
            self.violation(f"{what} a key that is not a SPIRE server's ({key.usage})", key)
            return
        if key.tags.get("spire-protect") == "true":
            self.violation(f"{what} a protected key", key)
            return
        if key.restored:
            self.violation(f"{what} a key an operator restored", key)
            return
        read = key.reread.get(write.who)
        if read is None or now - read > timedelta(minutes=10):
            self.violation(f"{what} a key without reading its tags from KMS first", key)
            return
        fresh = self._freshness_as_of(key, read)
        if fresh > read - self.policy.stale_after:
            self.violation(
                f"{what} a key alive when read (last sign of life {fresh:%Y-%m-%d %H:%M})", key
            )
            return
        owner = self.servers.get(key.owner)
        if self.account.freshness(key) > now - self.policy.stale_after:
            # Its server stamped it between the daemon's read and this write: no read can close
            # that window; counted, not a breach.
            self.figures.lost_races += 1
        elif owner is not None and owner.alive and key in owner.slots.values():
            # Back from the dead, but nothing in AWS says so yet (SPIRE stamps 6 hours after it
            # starts; its daemon, if any, within a minute): indistinguishable from dead.
            self.figures.unannounced += 1

    def _freshness_as_of(self, key: SimKey, moment: datetime) -> datetime:
        """The key's last sign of life as KMS held it at ``moment``."""
        # Signs of life only move forward; the current one is the answer unless it came later.
        current = self.account.freshness(key)
        if current <= moment:
            return current
        history = [key.created]
        for visible, tags in key.history:
            del visible
            stamp = spire.parse_last_update(tags.get(spire.TAG_LAST_UPDATE))
            if stamp is not None and stamp <= moment.timestamp():
                history.append(datetime.fromtimestamp(stamp, UTC))
        return max(history)

    def _count_budget(self, key: SimKey) -> None:
        td = key.tags.get(spire.TAG_TRUST_DOMAIN, "")
        now = self.clock.now
        self.figures.reclaimed += 1
        times = self.scheduled[td]
        times.append((now, key.key_id))
        window = self.config_interval()
        # A key an operator restored since gives its share back (AWS no longer shows it
        # scheduled, and the budget is read from AWS).
        recent = len({k for t, k in times if t > now - window and not self._restored(k)})
        self.figures.budget_high_water = max(self.figures.budget_high_water, recent)
        if recent > self.policy.max_reclaims:
            self.violation(
                f"{recent} keys of {td} scheduled within {window}, over max_reclaims="
                f"{self.policy.max_reclaims}",
                key,
            )
        dead = self.dead_since.get(key.key_id)
        if dead is not None:
            latency = (now - dead).total_seconds() / 3600
            self.figures.max_reclaim_latency_hours = max(
                self.figures.max_reclaim_latency_hours, latency
            )

    def _restored(self, key_id: str) -> bool:
        key = self.account.keys.get(key_id)
        return key is not None and key.state in ("Enabled", "Disabled")

    def _hourly(self) -> None:
        self.account.tick()
        for server in list(self.restore_later):
            marks = [
                spire.parse_last_update(k.tags.get(spire.TAG_MARKED_AT))
                for k in server.slots.values()
                if k.state == "PendingDeletion"
            ]
            if any(m is not None for m in marks):
                # Within the pending window: some soon after the mark, some days later.
                self.restore_later.discard(server)
                delay = timedelta(hours=self.rng.uniform(1, 6 * 24))
                self.clock.after(delay, partial(self._restore, server))
        self._audit_deadlines()
        self.clock.after(HOUR, self._hourly)

    def _deadline_slack(self) -> timedelta:
        settings = next(iter(self.settings.values()), None)
        interval = settings.reclaim.interval if settings else 48 * HOUR
        jitter = settings.reclaim.jitter if settings else 0.1
        return interval * (1 + jitter) + RETRY_CAP + self.config.index_lag + HOUR

    def _audit_deadlines(self) -> None:
        """Every dead SPIRE key is pending deletion in time, or a guard held its trust domain."""
        now = self.clock.now
        slack = self.policy.stale_after + self._deadline_slack()
        for td in self.tds:
            for key in self.account.keys_of(td):
                if key.state != "Enabled" or key.owner is None or key.key_id in self.overdue:
                    continue
                if key.restored or key.tags.get(spire.TAG_ACTIVE) != spire.ACTIVE_TRUE:
                    continue
                if key.tags.get(spire.TAG_SERVER_ID) != key.owner:
                    continue
                owner = self.servers[key.owner]
                if owner.alive and key in owner.slots.values():
                    continue  # in use: alive, whatever its stamps say
                dead = self.account.freshness(key)
                if now - dead <= slack:
                    continue
                held = self.held_at.get(td)
                if held is not None and now - held <= self._deadline_slack():
                    self.figures.held_by_guard += 1
                    self.overdue.add(key.key_id)  # counted once
                    continue
                ran = self.reclaimed_at.get(td)
                if ran is None or now - ran > self._deadline_slack():
                    self.figures.no_daemon_left += 1  # every daemon of the trust domain is gone
                    self.overdue.add(key.key_id)
                    continue
                self.overdue.add(key.key_id)
                self.violation(
                    f"dead key {key.key_id} of {td} (last sign of life {dead:%Y-%m-%d %H:%M}) "
                    "not reclaimed in time"
                )

    # --- runs -----------------------------------------------------------------------------------

    def record(self, daemon: DaemonProcess, report: RunReport, log: RunLog) -> None:
        """A run finished: count it, check its calls against the bound."""
        fig = self.figures
        job = report.job
        if report.job == Job.REFRESH:
            fig.refresh_runs += 1
        else:
            fig.reclaim_runs += 1
            self.reclaimed_at[daemon.server.td] = self.clock.now
        if report.plan.refusal is not None:
            fig.refused_runs[report.plan.refusal.value] += 1
            if report.plan.refusal in (Refusal.BUDGET, Refusal.BLAST_RADIUS):
                self.held_at[daemon.server.td] = self.clock.now
        calls = sum(report.aws_calls.values())
        fig.max_calls[job] = max(fig.max_calls.get(job, 0), calls)
        bound = (
            refresh_bound(report, log, len(KEY_IDS), len(self.account.aliases))
            if report.job == Job.REFRESH
            else reclaim_bound(
                log,
                report,
                daemon.server.sid,
                [self.clock.now, daemon.host_clock(), report.started_at],
                self.policy,
            )
        )
        if calls > bound:
            fig.max_calls_over_bound = max(fig.max_calls_over_bound, calls - bound)
            self.violation(
                f"{job} run of {daemon.server.sid[:8]} made {calls} calls, over its bound {bound} "
                f"({dict(report.aws_calls)})"
            )
        for result in report.results:
            if result.error and "differ from the tagging index" in result.error:
                fig.kept_by_reread.add(result.action.key_id)
        for verdict in report.plan.verdicts:
            if verdict.verdict is Verdict.RESTORED:
                fig.restored_left_alone.add(verdict.arn)

    async def run(self) -> Figures:
        """Build the world and run it to the end; return the figures."""
        started = time.monotonic()
        self.build()
        await self.clock.run(START + self.config.days * DAY)
        for server in self.servers.values():
            if server.daemon is not None and server.daemon.alive:
                self.figures.throttled += server.daemon.faults.throttled
        self.figures.wall_seconds = time.monotonic() - started
        return self.figures


class DaemonProcess:
    """One daemon process on a host: its two jobs on their intervals, retries, its AWS clients."""

    def __init__(self, fleet: Fleet, server: Server, settings: Settings) -> None:
        self.fleet = fleet
        self.server = server
        self.settings = settings
        self.faults = Faults(
            throttle_rate=fleet.config.throttle_rate,
            describe_failure_rate=fleet.config.describe_failure_rate,
            drop_date_rate=fleet.config.drop_date_rate,
        )
        clock = fleet.clock

        def host_clock() -> datetime:
            return server.host_now(clock.now)

        def monotonic() -> float:  # simulated time never steps
            return (clock.now - START).total_seconds()

        self.host_clock = host_clock
        kms = SimKms(fleet.account, host_clock, self.faults, server.sid)
        tagging = SimTagging(fleet.account, host_clock, self.faults, server.sid)
        api = AwsApi(kms, tagging, mutating_calls_per_second=1e9)
        self.ctx = Context(
            settings,
            server.sid,
            api,
            JobState(),
            clock=host_clock,
            monotonic=monotonic,
            probe=self._probe,
        )
        self.alive = False
        self.running: dict[Job, bool] = {Job.REFRESH: False, Job.RECLAIM: False}
        self.failures: Counter[Job] = Counter()
        self.retry_token: dict[Job, int] = {}

    async def _probe(self) -> Liveness:
        await self.fleet.clock.sleep(0.002)
        if self.server.alive:
            return Liveness(True, "HTTP 200", "http://localhost:8080/live")
        return Liveness(False, "connection refused", "http://localhost:8080/live")

    def start(self) -> None:
        """The process starts: refresh now, reclaim after its start delay."""
        self.alive = True
        reclaim = self.settings.reclaim
        self._tick(Job.REFRESH, self.fleet.clock.now)
        self.fleet.clock.after(
            reclaim.start_delay, lambda: self._tick(Job.RECLAIM, self.fleet.clock.now)
        )

    def stop(self) -> None:
        """The process stops (host down, killed, removed): calls in flight die with it."""
        if not self.alive:
            return
        self.alive = False
        self.faults.killed = True
        self.fleet.figures.throttled += self.faults.throttled
        self.faults.throttled = 0

    def _interval(self, job: Job) -> tuple[timedelta, float]:
        s = self.settings.refresh if job is Job.REFRESH else self.settings.reclaim
        return s.interval, s.jitter

    def _tick(self, job: Job, due: datetime) -> None:
        """A scheduled run is due; the next is set as APScheduler's interval trigger would."""
        if not self.alive:
            return
        interval, jitter = self._interval(job)
        later = (
            due
            + interval
            + timedelta(seconds=self.fleet.rng.uniform(0, jitter) * interval.total_seconds())
        )
        self.fleet.clock.at(later, lambda: self._tick(job, later))
        self._launch(job)

    def _launch(self, job: Job) -> None:
        if not self.alive or self.running[job]:
            return  # a retry and a tick never run at once
        self.running[job] = True
        asyncio.get_running_loop().create_task(self._run(job))

    async def _run(self, job: Job) -> None:
        fleet = self.fleet
        log = RunLog()
        CURRENT_RUN.set(log)
        if job is Job.RECLAIM:
            self._maybe_fault()
        try:
            report = await (refresh_once if job is Job.REFRESH else reclaim_once)(self.ctx)
        except Killed:
            if self.alive:
                self._killed()
            return
        finally:
            self.running[job] = False
        if not self.alive:
            return  # the process died: nobody saw this report
        fleet.record(self, report, log)
        if needs_retry(report):
            self.failures[job] += 1
        else:
            self.failures[job] = 0
        delay = retry_delay(report, self.failures[job], self._interval(job)[0])
        if delay is not None:
            token = self.retry_token[job] = self.retry_token.get(job, 0) + 1
            fleet.clock.after(delay, lambda: self._retry(job, token))

    def _retry(self, job: Job, token: int) -> None:
        if self.retry_token.get(job) == token:
            self._launch(job)

    def _maybe_fault(self) -> None:
        """Faults for the reclaim run about to start: a kill after a few writes, or a step of the
        host clock (one that is back before the first request lands, or one mid-run)."""
        cfg, rng, server = self.fleet.config, self.fleet.rng, self.server
        if rng.random() < cfg.kill_rate:
            self.faults.kill_after_writes = rng.randint(1, 4)
        if rng.random() < cfg.mid_run_step_rate and not server.offset:
            # Hours either way, weeks ahead, or just under stale_after ahead (the keys stamped
            # a few hours ago look stale, the ones stamped just now do not: about half).
            near = self.fleet.policy.stale_after - timedelta(hours=rng.uniform(1, 5))
            step = rng.choice([timedelta(hours=-3), timedelta(hours=2), 15 * DAY, 30 * DAY, near])
            if rng.random() < 0.5:
                # Far ahead as the run starts, stepped back (NTP) before its first request.
                hold, start = timedelta(seconds=self.fleet.config.call_latency[0] / 2), timedelta(0)
            else:
                hold, start = timedelta(minutes=10), timedelta(seconds=rng.uniform(0.05, 1.0))
            self.fleet.figures.clock_steps += 1

            def step_now() -> None:
                server.offset = step
                self.fleet.clock.after(hold, lambda: setattr(server, "offset", timedelta(0)))

            if start:
                self.fleet.clock.after(start, step_now)
            else:
                step_now()

    def trigger(self, job: Job) -> None:
        """An operator runs the job by hand on this host (``once --job``)."""
        self._launch(job)

    def _killed(self) -> None:
        """SIGKILL: systemd restarts the process a few seconds later, with no memory."""
        self.fleet.figures.kills += 1
        self.stop()
        server = self.server
        fleet = self.fleet

        def restart() -> None:
            if server.host_up and server.daemon_installed and not server.decommissioned:
                fleet._start_daemon(server)

        fleet.clock.after(RESTART_AFTER, restart)


# --- call bounds (bench/README.md) ----------------------------------------------------------------


def refresh_bound(report: RunReport, log: RunLog, kids: int, account_aliases: int) -> int:
    """bench/README.md's refresh bound: ceil(L/100) GetResources pages over this server's tagged
    keys, per SPIRE key ID k one DescribeKey on its alias name, another right before its
    UpdateAlias, one UpdateAlias and, for a legacy
    key, one migration (TagResource), ceil(k/20) TagResources for the stamps, one DescribeKey per
    tagged key no alias resolves to (superseded), ceil(k/100) GetResources by ARN for alias
    targets outside the tagged keys, and the account-wide scan's pages when it is due.

    Superseded keys are read from the run's verdicts; a run that ended before it judged any
    (refused, or a read failed) is allowed every tagged key it listed."""
    listed = len(log.listed)
    own = [v for v in report.plan.verdicts]
    superseded = (
        sum(1 for v in own if v.verdict not in (Verdict.SERVING, Verdict.LEGACY)) if own else listed
    )
    scan = math.ceil(max(1, account_aliases) / 100) if report.aws_calls.get("ListAliases") else 0
    return (
        max(1, math.ceil(listed / 100))
        + 4 * kids
        + math.ceil(kids / 20)
        + superseded
        + math.ceil(kids / 100)
        + scan
    )


def reclaim_bound(
    log: RunLog, report: RunReport, server_id: str, nows: list[datetime], policy: ReclaimPolicy
) -> int:
    """bench/README.md's reclaim bound: ceil(M/100) GetResources pages + 1 DescribeKey per key
    already pending deletion + 4 per other key whose tags say stale or inactive (DescribeKey,
    ListAliases by key ID, ListResourceTags before the mark, ScheduleKeyDeletion) + ceil(those/20)
    TagResources + 1 DescribeKey per server of the trust domain, and 1 more for each described key
    that turned out not Enabled or whose DescribeKey failed (the blast-radius guard counts servers
    through keys known to be Enabled, and asks for another key of a server until it knows one) +
    for this server's own stale-looking keys, 1 DescribeKey per own key and per SPIRE key ID + 1
    DescribeKey per write that failed for a key (is it pending already?)."""
    listed = [ObservedKey("arn", tags) for tags in log.listed]
    described = [
        k
        for k in listed
        if any(needs_state(k, k.tags.get(spire.TAG_TRUST_DOMAIN, ""), now, policy) for now in nows)
    ]
    pending = sum(1 for v in report.plan.verdicts if v.verdict is Verdict.RECLAIMED)
    other = max(0, len(described) - pending)
    servers = len({k.tags.get(spire.TAG_SERVER_ID) for k in listed})
    own = [k for k in listed if k.tags.get(spire.TAG_SERVER_ID) == server_id]
    own_kids = {k.tags.get(spire.TAG_KEY_ID) for k in own}
    own_extra = len(own) + len(own_kids) if any(k in described for k in own) else 0
    return (
        max(1, math.ceil(len(listed) / 100))
        + pending
        + 4 * other
        + math.ceil(other / 20)
        + servers
        + log.describe_misses
        + own_extra
        + log.write_failures
    )


# --- the command ----------------------------------------------------------------------------------


def _quiet_logs() -> None:
    structlog.configure(
        processors=[],
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        cache_logger_on_first_use=True,
    )


def simulate(config: FleetConfig, *, fail_fast: bool = False) -> Figures:
    """Run the simulation in a fresh event loop."""
    _quiet_logs()

    async def main() -> Figures:
        asyncio.get_running_loop().set_default_executor(InlineExecutor())
        return await Fleet(config, fail_fast=fail_fast).run()

    return asyncio.run(main())


def render(config: FleetConfig, fig: Figures) -> str:
    """The figures as a table."""
    rows = [
        (
            "servers / trust domains / daemons",
            f"{fig.servers} / {fig.trust_domains} / {fig.daemons}",
        ),
        ("simulated days (seed)", f"{fig.days:g} ({config.seed})"),
        ("keys created", f"{fig.keys:,}"),
        ("daemon runs: refresh / reclaim", f"{fig.refresh_runs:,} / {fig.reclaim_runs:,}"),
        (
            "runs refused, by guard",
            ", ".join(f"{k} {v}" for k, v in sorted(fig.refused_runs.items())) or "none",
        ),
        ("keys reclaimed by daemons", f"{fig.reclaimed:,}"),
        ("stamps and alias refreshes by daemons", f"{fig.stamps:,}"),
        (
            "longest death-to-deletion (decommissioned)",
            f"{fig.max_reclaim_latency_hours / 24:.1f} days",
        ),
        ("dead keys held past the deadline by a guard", f"{fig.held_by_guard}"),
        ("dead keys with no daemon left in their trust domain", f"{fig.no_daemon_left}"),
        (
            "budget high-water mark (per TD, any window)",
            f"{fig.budget_high_water} (max_reclaims 10)",
        ),
        (
            "max calls per run: refresh / reclaim",
            f"{fig.max_calls.get('refresh', 0)} / {fig.max_calls.get('reclaim', 0)}",
        ),
        (
            "runs over their call bound",
            f"{sum(1 for v in fig.violations if 'over its bound' in v)}",
        ),
        (
            "faults: processes killed / calls throttled / clock steps",
            f"{fig.kills} / {fig.throttled:,} / {fig.clock_steps}",
        ),
        ("comebacks / keys restored by operators", f"{fig.comebacks} / {fig.restores}"),
        ("keys kept by the re-read from KMS (stale index)", f"{len(fig.kept_by_reread)}"),
        ("restored keys left alone (old mark)", f"{len(fig.restored_left_alone)}"),
        ("stamped between the daemon's read and its write", f"{fig.lost_races}"),
        ("reclaimed back from the dead before AWS showed it", f"{fig.unannounced}"),
        ("keys wrongly touched", f"{len(fig.wrongly_touched)}"),
        ("invariant violations", f"{len(fig.violations)}"),
        ("wall time", f"{fig.wall_seconds:.0f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    if fig.violations:
        lines += ["", "violations (first 20):", *(f"  {v}" for v in fig.violations[:20])]
    return "\n".join(lines)


def _config_dict(config: FleetConfig) -> dict[str, Any]:
    return {
        name: value.total_seconds() if isinstance(value, timedelta) else value
        for name, value in vars(config).items()
    }


def main(argv: list[str] | None = None) -> int:
    """Run the simulation and print its figures; exit 1 when an invariant broke."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI version")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--servers", type=int)
    parser.add_argument("--trust-domains", type=int)
    parser.add_argument("--days", type=float)
    parser.add_argument(
        "--defect",
        choices=sorted(defects.DEFECTS),
        help="put a known defect back into the daemon (the run must then fail)",
    )
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first violation")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":
        # Same seed, same run: the order of sets of strings must not change between runs.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        command = [
            sys.executable,
            "-m",
            "devtools.fleet",
            *(sys.argv[1:] if argv is None else argv),
        ]
        return subprocess.run(command, env=env, check=False).returncode
    config = FleetConfig.short(args.seed) if args.short else FleetConfig(seed=args.seed)
    overrides = {
        name: value
        for name, value in (
            ("servers", args.servers),
            ("trust_domains", args.trust_domains),
            ("days", args.days),
        )
        if value is not None
    }
    config = replace(config, **overrides)
    with defects.inject(args.defect) if args.defect else contextlib.nullcontext():
        figures = simulate(config, fail_fast=args.fail_fast)
    if args.json:
        print(json.dumps({"config": _config_dict(config), **figures.as_dict()}, indent=2))
    else:
        if args.defect:
            print(f"defect put back: {args.defect} ({defects.DEFECTS[args.defect][0]})")
        print(render(config, figures))
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
