"""The `run` daemon (daemon.runtime): the real process against the emulator, and in-process.

The subprocess tests start ``python -m daemon run --config <toml>`` with second-scale intervals,
then judge it only from the outside, as an operator would: /metrics and /healthz over HTTP, the
JSON log lines on stdout, the datagrams it sends to a NOTIFY_SOCKET, its exit code, and the AWS
state read back from the emulator. They never sleep for a schedule: every wait polls for its
condition with a bounded deadline.

The in-process tests drive :class:`daemon.runtime.Daemon` with a fake clock and fake job bodies:
/healthz decisions and the retry scheduling after a failed run.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from prometheus_client import CollectorRegistry

from daemon import __version__, retries, runtime, spire
from daemon.aws.stats import CallStats
from daemon.clocksteps import ClockStepWatcher
from daemon.jobs import Context
from daemon.metrics import Metrics
from daemon.model import Job, Liveness, Plan, Refusal, RunReport
from daemon.registry import JOBS
from daemon.runtime import Daemon
from daemon.settings import load_settings
from daemon.systemd import sd_notify
from devtools.emulator import Emulator, free_port
from devtools.faultproxy import FaultProxy
from devtools.spire_health import SpireHealth
from tests.daemons import (
    DEADLINE,
    OPENER,
    SECRET,
    DaemonProcess,
    P,
    Samples,
    daemon_env,
    healthz,
    http_get,
    sample,
    scrape,
    total,
)
from tests.world import PEER, SERVER, TD

pytestmark = pytest.mark.integration

PEER2 = "5e0c2f4a-1111-4222-8333-444455556666"
SUMMARY_EVENTS = ("refresh_finished", "reclaim_finished")
SUMMARY_FIELDS = ("job", "outcome", "actions", "aws_calls", "duration_seconds", "run_id")


# --- helpers: settings, environment, HTTP --------------------------------------------------------


def write_config(
    tmp: Path,
    port: int,
    *,
    refresh_interval: str = "2s",
    read_timeout: str = "5s",
    extra: str = "",
    spire_url: str | None = None,
) -> Path:
    """Settings with second-scale schedules; the key identifier file holds SERVER."""
    keyid = tmp / "keyid"
    keyid.write_text(SERVER)
    path = tmp / "config.toml"
    path.write_text(
        f'trust_domain = "{TD}"\n'
        'region = "us-east-1"\n'
        f'key_identifier_file = "{keyid}"\n'
        + (f'spire_health_url = "{spire_url}"\n' if spire_url else "assume_spire_alive = true\n")
        + f"{extra}"
        f'[refresh]\ninterval = "{refresh_interval}"\nalias_scan_interval = "2s"\njitter = 0\n'
        '[reclaim]\ninterval = "3s"\nstart_delay = "1s"\njitter = 0\n'
        f'[metrics]\nlisten_address = "127.0.0.1:{port}"\n'
        f'[aws]\nconnect_timeout = "2s"\nread_timeout = "{read_timeout}"\nmax_attempts = 2\n'
        "mutating_calls_per_second = 50\n"
        '[log]\nformat = "json"\nlevel = "info"\n'
    )
    return path


class NotifySocket:
    """A unix datagram socket standing in for systemd's; drained continuously by a thread."""

    def __init__(self, directory: Path) -> None:
        path = directory / "notify"
        if len(str(path)) > 100:  # sun_path is 108 bytes
            path = Path(tempfile.mkdtemp(prefix="sdn-")) / "notify"
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def lines(self) -> list[str]:
        with self._lock:
            return [line for message in self.messages for line in message.splitlines()]

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=5)
        self._sock.close()


# --- the process: metrics, logs, stop, sd_notify, then `once` -------------------------------------


def test_run_serves_metrics_logs_notifies_and_stops(
    aws: Emulator, spawn: Callable[..., DaemonProcess], tmp_path: Path, spire_health: SpireHealth
) -> None:
    now = datetime.now(UTC)
    legacy = aws.spire_key(
        TD, SERVER, "x509-CA-A", last_update=None, tagged=False, created_at=now - timedelta(days=30)
    )
    own = aws.spire_key(
        TD,
        SERVER,
        "JWT-Signer-A",
        last_update=int((now - timedelta(hours=1)).timestamp()),
        created_at=now - timedelta(days=30),
    )
    stale_peer = aws.spire_key(
        TD,
        PEER,
        "x509-CA-A",
        last_update=int((now - timedelta(days=20)).timestamp()),
        alias=False,
        created_at=now - timedelta(days=90),
    )
    fresh_peer = aws.spire_key(
        TD,
        PEER2,
        "x509-CA-A",
        last_update=int((now - timedelta(hours=1)).timestamp()),
        alias=False,
        created_at=now - timedelta(days=90),
    )
    port = free_port()
    config = write_config(tmp_path, port, spire_url=spire_health.url)
    notify = NotifySocket(tmp_path)
    try:
        env = daemon_env(aws, tmp_path, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000")
        daemon = spawn("run", "--config", str(config), env=env)

        # (1) /metrics, scraped twice: refresh successes grow, last success moves forward.
        def refreshed(at_least: float) -> Samples | None:
            samples = scrape(port)
            ok = sample(samples, "runs_total", task="refresh", outcome="success") or 0.0
            return samples if ok >= at_least else None

        first = daemon.poll_until("a first successful refresh", lambda: refreshed(1))
        n1 = sample(first, "runs_total", task="refresh", outcome="success")
        t1 = sample(first, "last_success_timestamp_seconds", task="refresh")
        assert n1 is not None and n1 >= 1
        assert t1 is not None and abs(t1 - time.time()) < 60
        summaries_seen = [e for e in daemon.events() if e.get("event") in SUMMARY_EVENTS]
        second = daemon.poll_until("a second successful refresh", lambda: refreshed(n1 + 1))
        n2 = sample(second, "runs_total", task="refresh", outcome="success")
        t2 = sample(second, "last_success_timestamp_seconds", task="refresh")
        assert n2 is not None and n2 > n1
        assert t2 is not None and t2 > t1
        assert sample(second, "build_info", version=__version__) == 1.0
        assert sample(second, "run_duration_seconds_count", task="refresh") == n2
        assert sample(second, "spire_up") == 1.0  # it asked the SPIRE server, which answered
        assert spire_health.requests >= 2
        assert sample(second, "interval_seconds", task="refresh") == 2.0
        assert sample(second, "interval_seconds", task="reclaim") == 3.0
        assert (sample(second, "keys", state="serving") or 0) >= 1
        # AWS calls are counted: at least those of the runs summarised before this scrape.
        counted = total(second, "aws_requests_total")
        assert counted >= sum(e["aws_calls_total"] for e in summaries_seen) > 0
        assert total(second, "aws_requests_total", operation="GetResources", outcome="success") >= 2
        for (name, labels), _ in second.items():
            for label, label_value in labels:
                assert "arn:" not in label_value, (name, label, label_value)

        # The reclaim job ran too (start_delay 1s) before we stop.
        daemon.wait_for("reclaim_finished")
        notify_lines = daemon.poll_until(
            "WATCHDOG=1 on the notify socket",
            lambda: (lines := notify.lines()) and "WATCHDOG=1" in lines and lines,
        )

        # (3) SIGTERM: a graceful stop, exit 0 well within the 30 s deadline, `stopped` logged.
        daemon.signal(signal.SIGTERM)
        assert daemon.finish(timeout=DEADLINE) == 0, daemon.tail()
    finally:
        notify.close()

    events = daemon.events()
    names = [e.get("event") for e in events]
    assert "stopping" in names and "stopped" in names, names[-5:]
    assert names.index("stopping") < names.index("stopped")

    # (2) every stdout line is one JSON object with the structlog basics.
    assert daemon.out, "the daemon logged nothing on stdout"
    for line in daemon.out:
        event = json.loads(line)
        assert isinstance(event, dict), line
        assert {"event", "level", "timestamp"} <= event.keys(), line
    assert SECRET not in "\n".join(daemon.out)  # the secret access key never appears

    summaries = [e for e in events if e["event"] in SUMMARY_EVENTS]
    assert {e["event"] for e in summaries} == {"refresh_finished", "reclaim_finished"}
    actions_by_run: dict[str, Counter[str]] = {}
    for event in events:
        if event["event"] == "action":
            assert event.get("run_id"), event
            key = f"{event['action']}.{event['outcome']}"
            actions_by_run.setdefault(event["run_id"], Counter())[key] += 1
    run_ids = set()
    for summary in summaries:
        missing = [f for f in SUMMARY_FIELDS if f not in summary]
        assert not missing, (missing, summary)
        assert summary["event"] == f"{summary['job']}_finished"
        assert summary["outcome"] in ("success", "failure", "refused")
        assert isinstance(summary["duration_seconds"], int | float)
        assert summary["duration_seconds"] >= 0
        assert isinstance(summary["aws_calls"], dict) and summary["aws_calls"], summary
        assert isinstance(summary["run_id"], str) and summary["run_id"]
        assert summary["run_id"] not in run_ids, "one summary per run"
        run_ids.add(summary["run_id"])
        # The run's action events carry its run_id and add up to its summary's counts.
        assert dict(actions_by_run.get(summary["run_id"], {})) == summary["actions"], summary
    assert set(actions_by_run) <= run_ids, "action events outside any summarised run"
    reclaims = [s for s in summaries if s["job"] == "reclaim"]
    assert reclaims[0]["actions"] == {"mark_inactive.success": 1, "schedule_deletion.success": 1}
    assert any(s["job"] == "refresh" and s["actions"] for s in summaries)

    # Every AWS call counted in /metrics belongs to some run's summary.
    assert counted <= sum(s["aws_calls_total"] for s in summaries)

    # (4) systemd notifications: READY=1 with a STATUS, the watchdog, STOPPING=1 on SIGTERM.
    assert "READY=1" in notify_lines
    assert any(line.startswith("STATUS=") for line in notify_lines), notify_lines
    assert "WATCHDOG=1" in notify_lines
    assert "STOPPING=1" in notify.lines()

    # `once` on the same settings converges: exit 0, nothing left for reclaim to do.
    once = spawn("once", "--config", str(config), env=daemon_env(aws, tmp_path))
    assert once.finish(timeout=DEADLINE) == 0, once.tail()
    once_events = [json.loads(line) for line in once.err if line.startswith("{")]
    reclaim_summary = next(e for e in once_events if e.get("event") == "reclaim_finished")
    assert reclaim_summary["outcome"] == "success"
    assert reclaim_summary["actions"] == {}, reclaim_summary
    assert any(line.startswith("refresh: success") for line in once.out), once.out
    assert aws.key_state(stale_peer) == "PendingDeletion"
    assert aws.tags(stale_peer)[spire.TAG_ACTIVE] == "false"
    assert aws.key_state(fresh_peer) == "Enabled"
    assert aws.key_state(own) == "Enabled"
    tags = aws.tags(legacy)
    assert tags[spire.TAG_TRUST_DOMAIN] == TD
    assert tags[spire.TAG_SERVER_ID] == SERVER
    assert tags[spire.TAG_ACTIVE] == "true"
    assert tags[spire.TAG_KEY_ID] == "x509-CA-A"
    assert abs(int(tags[spire.TAG_LAST_UPDATE]) - time.time()) < 120


def test_healthz_and_spire_up_follow_the_spire_server(
    aws: Emulator, spawn: Callable[..., DaemonProcess], tmp_path: Path, spire_health: SpireHealth
) -> None:
    own = aws.spire_key(
        TD,
        SERVER,
        "x509-CA-A",
        last_update=int((datetime.now(UTC) - timedelta(hours=1)).timestamp()),
    )
    port = free_port()
    config = write_config(
        tmp_path, port, spire_url=spire_health.url, extra='spire_health_timeout = "1s"\n'
    )
    daemon = spawn("run", "--config", str(config), env=daemon_env(aws, tmp_path))
    try:
        daemon.poll_until("healthy", lambda: healthz(port)[0] == 200)
        assert sample(scrape(port), "spire_up") == 1.0

        spire_health.set("dead")
        _, body = daemon.poll_until(
            "503 while SPIRE is not alive",
            lambda: (answer := healthz(port))[0] == 503 and answer,
        )
        assert "refused: the SPIRE server is not alive (HTTP 500" in body["reason"], body
        # /livez, the Kubernetes probe, says only that the daemon answers: a SPIRE server that
        # is down must not get its sidecar restarted or its pod taken out of service.
        assert http_get(f"http://127.0.0.1:{port}/livez")[0] == 200
        samples = scrape(port)
        assert sample(samples, "spire_up") == 0.0
        refused = sample(samples, "runs_total", task="refresh", outcome="refused") or 0.0
        assert refused >= 1
        stamp = aws.tags(own)[spire.TAG_LAST_UPDATE]
        daemon.poll_until(
            "another refused refresh",
            lambda: (
                (sample(scrape(port), "runs_total", task="refresh", outcome="refused") or 0)
                > refused
            ),
        )
        assert aws.tags(own)[spire.TAG_LAST_UPDATE] == stamp  # nothing written meanwhile
        assert total(scrape(port), "reclaim_refused_total") == 0  # refresh is not reclaim

        spire_health.set("alive")
        daemon.poll_until("healthy again", lambda: healthz(port)[0] == 200)
        daemon.poll_until("stamped again", lambda: aws.tags(own)[spire.TAG_LAST_UPDATE] != stamp)
        assert sample(scrape(port), "spire_up") == 1.0
    finally:
        daemon.signal(signal.SIGTERM)
        daemon.finish(timeout=DEADLINE)
    events = [e for e in daemon.events() if e.get("event") == "spire_not_alive"]
    assert events and all(e["failure"] == "http_status" and e["status"] == 500 for e in events)


# --- /healthz and permission_denied through the fault proxy --------------------------------------


def test_healthz_turns_503_when_get_resources_is_denied(
    aws: Emulator, spawn: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    aws.spire_key(
        TD,
        SERVER,
        "x509-CA-A",
        last_update=int((now - timedelta(hours=1)).timestamp()),
        created_at=now - timedelta(days=30),
    )
    port = free_port()
    config = write_config(tmp_path, port)
    with FaultProxy(aws.endpoint_url) as proxy:
        env = daemon_env(aws, tmp_path, AWS_ENDPOINT_URL=proxy.endpoint_url)
        daemon = spawn("run", "--config", str(config), env=env)

        def health_is(status: int) -> dict[str, Any] | None:
            code, body = healthz(port)
            return body if code == status else None

        body = daemon.poll_until("healthz 200", lambda: health_is(200))
        assert body["status"] == "ok"
        with OPENER.open(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.headers.get_content_type() == "application/json"
        assert body["last_refresh_outcome"] == "success"
        assert body["last_refresh_success"]
        assert proxy.count("GetResources") >= 1, "the daemon did not go through the proxy"
        samples = scrape(port)
        assert sample(samples, "permission_denied", task="refresh") == 0.0

        proxy.deny("GetResources")
        body = daemon.poll_until("healthz 503", lambda: health_is(503))
        assert body["status"] == "unhealthy"
        assert body["last_refresh_outcome"] == "failure"
        assert "GetResources" in body["reason"], body
        assert "identity-based" in body["reason"], body
        samples = daemon.poll_until(
            "permission_denied 1",
            lambda: (
                (s := scrape(port)) and sample(s, "permission_denied", task="refresh") == 1.0 and s
            ),
        )
        assert total(samples, "aws_requests_total", operation="GetResources", outcome="denied") >= 1
        assert (sample(samples, "runs_total", task="refresh", outcome="failure") or 0) >= 1
        denied = daemon.wait_for("refresh_finished", where=lambda e: e["outcome"] == "failure")
        assert "tag:GetResources" in denied["error"]

        # Granted again: the next refresh brings /healthz and the gauge back.
        proxy.clear_rules()
        body = daemon.poll_until("healthz 200 again", lambda: health_is(200))
        assert body["status"] == "ok"
        daemon.poll_until(
            "permission_denied 0",
            lambda: sample(scrape(port), "permission_denied", task="refresh") == 0.0,
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.finish(timeout=DEADLINE) == 0, daemon.tail()


# --- SIGHUP ---------------------------------------------------------------------------------------


def test_sighup_with_invalid_settings_keeps_the_daemon_running(
    aws: Emulator, spawn: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    aws.spire_key(
        TD,
        SERVER,
        "x509-CA-A",
        last_update=int((now - timedelta(hours=1)).timestamp()),
        created_at=now - timedelta(days=30),
    )
    port = free_port()
    config = write_config(tmp_path, port)
    daemon = spawn("run", "--config", str(config), env=daemon_env(aws, tmp_path))
    daemon.wait_for("started")  # the SIGHUP handler is in place (SIGHUP's default is to die)
    daemon.wait_for("refresh_finished")

    good = config.read_text()
    config.write_text(good.replace('interval = "2s"', 'interval = "soon"', 1))
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_for("reload_rejected")
    assert "refresh.interval" in rejected["error"], rejected
    index = daemon.events().index(rejected)

    # Still running on the settings in force: another refresh completes, /healthz stays 200.
    after = daemon.wait_for(
        "refresh_finished", since=index + 1, where=lambda e: e["outcome"] == "success"
    )
    assert after["job"] == "refresh"
    assert daemon.proc.poll() is None
    assert healthz(port)[0] == 200

    # A valid file is taken.
    config.write_text(good.replace("max_attempts = 2", "max_attempts = 3"))
    daemon.signal(signal.SIGHUP)
    first = daemon.wait_for("reloaded", since=index + 1)
    assert "region and [aws] take effect on restart" in first["notes"]
    # A second reload that changes something else still says the [aws] change waits.
    config.write_text(
        good.replace("max_attempts = 2", "max_attempts = 3").replace(
            '[reclaim]\ninterval = "3s"', '[reclaim]\ninterval = "4s"'
        )
    )
    daemon.signal(signal.SIGHUP)
    second = daemon.wait_for("reloaded", since=daemon.events().index(first) + 1)
    assert "region and [aws] take effect on restart" in second["notes"], second

    daemon.signal(signal.SIGTERM)
    assert daemon.finish(timeout=DEADLINE) == 0, daemon.tail()
    assert daemon.events()[-1]["event"] == "stopped"


def test_sighup_log_level_change_is_applied_or_reported(
    aws: Emulator, spawn: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """After SIGHUP with [log] level = "warning": no more info events, or a note saying the
    change takes effect on restart (as the reload does for [metrics])."""
    now = datetime.now(UTC)
    aws.spire_key(
        TD,
        SERVER,
        "x509-CA-A",
        last_update=int((now - timedelta(hours=1)).timestamp()),
        created_at=now - timedelta(days=30),
    )
    port = free_port()
    config = write_config(tmp_path, port)
    daemon = spawn("run", "--config", str(config), env=daemon_env(aws, tmp_path))
    daemon.wait_for("refresh_finished")

    config.write_text(config.read_text().replace('level = "info"', 'level = "warning"'))
    hup = time.time()
    daemon.signal(signal.SIGHUP)
    # A refresh run made entirely after the reload has finished: judged from /metrics, since an
    # applied level would silence the logs that would otherwise say so.
    daemon.poll_until(
        "a refresh after the reload",
        lambda: (
            (sample(scrape(port), "last_success_timestamp_seconds", task="refresh") or 0)
            > hup + 0.5
        ),
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.finish(timeout=DEADLINE) == 0, daemon.tail()
    events = daemon.events()
    reloaded = [e for e in events if e["event"] in ("reloaded", "reload_rejected")]
    told = any("log" in note for e in reloaded for note in e.get("notes", []))
    later_info = [
        e["event"]
        for e in events
        if e.get("level") == "info"
        and datetime.fromisoformat(e["timestamp"]).timestamp() > hup + 0.2
    ]
    assert told or not later_info, (
        f"[log] level = warning taken on SIGHUP ({reloaded}) but info events go on: {later_info}"
    )


# --- a second signal while stopping ---------------------------------------------------------------


class BlackHole:
    """A TCP endpoint that accepts connections and never answers: an AWS call that hangs."""

    def __init__(self) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self._server.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=5)
        for conn in self.connections:
            conn.close()
        self._server.close()


def test_second_signal_while_stopping_exits_at_once(
    aws: Emulator, spawn: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """SIGTERM while a run hangs on AWS starts the graceful stop; SIGINT then exits at once.

    The run is held deterministically: AWS_ENDPOINT_URL points at a socket that accepts and never
    answers, with a 30 s read timeout, so the graceful stop would wait ~30 s for it.
    """
    hole = BlackHole()
    try:
        port = free_port()
        config = write_config(tmp_path, port, read_timeout="30s")
        env = daemon_env(aws, tmp_path, AWS_ENDPOINT_URL=hole.url)
        daemon = spawn("run", "--config", str(config), env=env)
        daemon.wait_for("started")
        daemon.poll_until("the first run's AWS call", lambda: hole.connections)

        # No refresh has finished: /healthz says starting.
        code, body = healthz(port)
        assert code == 503
        assert body["status"] == "starting"

        daemon.signal(signal.SIGTERM)
        waiting = daemon.wait_for("waiting_for_running_job")
        assert "refresh" in waiting["jobs"]
        assert daemon.proc.poll() is None, "the first signal must not end a running job"

        sent = time.monotonic()
        daemon.signal(signal.SIGINT)
        code = daemon.finish(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        hole.close()
    assert code != 0
    assert elapsed < 5, f"the second signal took {elapsed:.1f}s to end the process"
    names = [e["event"] for e in daemon.events()]
    assert "stop_forced" in names
    assert "stopped" not in names


# --- in-process: /healthz logic and retries, with a fake clock -----------------------------------


class FakeApi:
    """Enough of AwsApi for the Daemon: call statistics, no AWS."""

    def __init__(self) -> None:
        self.stats = CallStats()


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def make_report(
    job: Job,
    *,
    error: str | None = None,
    denied: bool = False,
    refusal: Refusal | None = None,
) -> RunReport:
    return RunReport(
        job=job,
        plan=Plan(job, refusal=refusal, refusal_detail="held" if refusal else ""),
        results=(),
        dry_run=False,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        duration_seconds=0.1,
        aws_calls={},
        error=error,
        permission_denied=denied,
    )


class RuntimeHarness:
    """A Daemon on fake settings, clock and API, whose job bodies return queued reports."""

    def __init__(
        self,
        tmp: Path,
        monkeypatch: pytest.MonkeyPatch,
        interval: str,
        *,
        stop_deadline: float = 30,
    ) -> None:
        path = tmp / "unit.toml"
        path.write_text(
            f'trust_domain = "{TD}"\nkey_identifier_value = "server-a"\n'
            f'[refresh]\ninterval = "{interval}"\nalias_scan_interval = "{interval}"\n'
            "[metrics]\nenabled = false\n"
        )
        settings = load_settings(path, env={}, required_file=True)
        self.clock = FakeClock()
        self.api = FakeApi()
        self.registry = CollectorRegistry()
        ctx = Context(settings, "server-a", self.api, clock=self.clock)  # type: ignore[arg-type]
        self.queue: dict[Job, list[RunReport | Exception]] = {job: [] for job in Job}
        # The registry's jobs, each running what the test queued instead of its real body.
        self.bodies = {j.job: self._body(j.job) for j in JOBS}
        jobs = [replace(j, once=self._call(j.job)) for j in JOBS]
        self.daemon = Daemon(ctx, Metrics(self.registry), stop_deadline=stop_deadline, jobs=jobs)
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    def _call(self, job: Job) -> Callable[[Context], Any]:
        async def call(ctx: Context) -> RunReport:
            return await self.bodies[job](ctx)  # type: ignore[no-any-return]

        return call

    def _body(self, job: Job) -> Callable[[Context], Any]:
        async def body(ctx: Context) -> RunReport:
            item = self.queue[job].pop(0)
            if isinstance(item, Exception):
                raise item
            return item

        return body

    async def run(self, job: Job, item: RunReport | Exception) -> RunReport | None:
        self.queue[job].append(item)
        return await self.daemon.run_job(job)


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RuntimeHarness:
    return RuntimeHarness(tmp_path, monkeypatch, "6h")


def paused_scheduler(harness: RuntimeHarness) -> AsyncIOScheduler:
    """A started but paused scheduler (jobs are stored, as in the daemon, but never fire)."""
    scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone="UTC")
    scheduler.start(paused=True)
    harness.daemon.scheduler = scheduler
    return scheduler


@pytest.fixture
async def scheduler(harness: RuntimeHarness) -> AsyncIterator[AsyncIOScheduler]:
    scheduler = paused_scheduler(harness)
    yield scheduler
    scheduler.shutdown(wait=False)


async def test_healthz_starting_before_the_first_refresh(harness: RuntimeHarness) -> None:
    status, body = harness.daemon.healthz()
    assert status == 503
    assert body["status"] == "starting"
    assert body["reason"]
    json.dumps(body)
    # A reclaim run does not make the daemon healthy: /healthz is about refresh.
    await harness.run(Job.RECLAIM, make_report(Job.RECLAIM))
    assert harness.daemon.healthz()[0] == 503


async def test_healthz_ok_after_success_until_two_intervals(harness: RuntimeHarness) -> None:
    await harness.run(Job.REFRESH, make_report(Job.REFRESH))
    succeeded = harness.clock.now
    status, body = harness.daemon.healthz()
    assert (status, body["status"]) == (200, "ok")
    assert body["last_refresh_outcome"] == "success"
    assert body["last_refresh_success"] == succeeded.isoformat()

    harness.clock.advance(timedelta(hours=12) - timedelta(seconds=1))
    assert harness.daemon.healthz()[0] == 200  # within two intervals (2 x 6h)
    harness.clock.advance(timedelta(seconds=2))
    status, body = harness.daemon.healthz()
    assert status == 503
    assert body["status"] == "unhealthy"
    assert "no successful refresh" in body["reason"]
    json.dumps(body)
    # An explicit ``now`` is honoured too.
    assert harness.daemon.healthz(succeeded + timedelta(hours=1))[0] == 200


async def test_healthz_503_when_the_last_refresh_failed(harness: RuntimeHarness) -> None:
    await harness.run(Job.REFRESH, make_report(Job.REFRESH))
    harness.clock.advance(timedelta(minutes=1))
    await harness.run(Job.REFRESH, make_report(Job.REFRESH, error="GetResources: InternalFailure"))
    status, body = harness.daemon.healthz()
    assert status == 503  # although the last success is only a minute old
    assert body["status"] == "unhealthy"
    assert body["last_refresh_outcome"] == "failure"
    assert "InternalFailure" in body["reason"]
    # A failing reclaim does not hide a healthy refresh, and vice versa.
    await harness.run(Job.REFRESH, make_report(Job.REFRESH))
    await harness.run(Job.RECLAIM, make_report(Job.RECLAIM, error="boom"))
    assert harness.daemon.healthz()[0] == 200


async def test_transient_failure_schedules_a_retry_with_backoff(
    harness: RuntimeHarness, scheduler: AsyncIOScheduler
) -> None:
    failed = make_report(Job.REFRESH, error="GetResources: InternalFailure")

    await harness.run(Job.REFRESH, failed)
    retry = scheduler.get_job("refresh-retry")
    assert retry is not None
    assert isinstance(retry.trigger, DateTrigger)
    assert retry.trigger.run_date == harness.clock.now + timedelta(seconds=30)
    assert retry.next_run_time == harness.clock.now + timedelta(seconds=30)
    assert retry.args == (Job.REFRESH,)

    harness.clock.advance(timedelta(seconds=30))
    await harness.run(Job.REFRESH, failed)  # second failure in a row: the delay doubles
    retries = [j for j in scheduler.get_jobs() if j.id == "refresh-retry"]
    assert len(retries) == 1
    assert retries[0].trigger.run_date == harness.clock.now + timedelta(seconds=60)
    assert scheduler.get_job("reclaim-retry") is None

    await harness.run(Job.RECLAIM, make_report(Job.RECLAIM, error="DescribeKey: boom"))
    assert scheduler.get_job("reclaim-retry") is not None


async def test_no_retry_for_permission_denied_refusal_or_success(
    harness: RuntimeHarness, scheduler: AsyncIOScheduler
) -> None:
    await harness.run(
        Job.REFRESH,
        make_report(Job.REFRESH, error="tag:GetResources denied", denied=True),
    )
    await harness.run(Job.RECLAIM, make_report(Job.RECLAIM, refusal=Refusal.BLAST_RADIUS))
    await harness.run(Job.RECLAIM, make_report(Job.RECLAIM))
    assert scheduler.get_jobs() == []
    assert harness.daemon.health[Job.REFRESH].failures_in_a_row == 0


async def test_a_spire_server_that_is_not_alive_is_asked_again_soon(
    harness: RuntimeHarness, scheduler: AsyncIOScheduler
) -> None:
    """A refused refresh for a dead SPIRE server is retried with backoff (one HTTP GET each)."""
    down = make_report(Job.REFRESH, refusal=Refusal.SPIRE_NOT_ALIVE)
    down = replace(
        down,
        plan=replace(down.plan, refusal_detail="the SPIRE server is not alive (HTTP 503)"),
        spire=Liveness(False, "HTTP 503", "http://localhost/live"),
    )
    await harness.run(Job.REFRESH, down)
    retry = scheduler.get_job("refresh-retry")
    assert retry is not None
    assert retry.trigger.run_date == harness.clock.now + retries.RETRY_BASE
    status, body = harness.daemon.healthz()
    assert status == 503
    assert "refused: the SPIRE server is not alive (HTTP 503)" in body["reason"]
    assert harness.registry.get_sample_value(P + "spire_up") == 0.0
    await harness.run(Job.REFRESH, down)
    assert scheduler.get_job("refresh-retry").trigger.run_date == (
        harness.clock.now + 2 * retries.RETRY_BASE
    )
    for _ in range(5):  # however long it is down, it is asked again within a minute
        await harness.run(Job.REFRESH, down)
    assert scheduler.get_job("refresh-retry").trigger.run_date == (
        harness.clock.now + retries.SPIRE_DOWN_RETRY_CAP
    )
    assert timedelta(minutes=1) == retries.SPIRE_DOWN_RETRY_CAP
    up = replace(make_report(Job.REFRESH), spire=Liveness(True, "HTTP 200", "http://x/live"))
    await harness.run(Job.REFRESH, up)
    assert harness.daemon.health[Job.REFRESH].failures_in_a_row == 0
    assert harness.daemon.healthz()[0] == 200
    assert harness.registry.get_sample_value(P + "spire_up") == 1.0


@pytest.mark.parametrize(
    ("report", "failures", "expected"),
    [
        (make_report(Job.REFRESH, error="boom"), 1, timedelta(seconds=30)),
        (make_report(Job.REFRESH, error="boom"), 3, timedelta(minutes=2)),
        (make_report(Job.RECLAIM, error="boom"), 7, timedelta(minutes=30)),
        # weeks of failures in a row: the backoff stays capped, the exponent never overflows
        (make_report(Job.RECLAIM, error="boom"), 40_000, timedelta(minutes=30)),
        (make_report(Job.REFRESH, refusal=Refusal.SPIRE_NOT_ALIVE), 1, timedelta(seconds=30)),
        (make_report(Job.REFRESH, refusal=Refusal.SPIRE_NOT_ALIVE), 40_000, timedelta(minutes=1)),
        (make_report(Job.RECLAIM, refusal=Refusal.BUDGET), 1, None),
        (make_report(Job.REFRESH, error="denied", denied=True), 1, None),
        (make_report(Job.REFRESH), 1, None),
    ],
)
def test_retry_delay(report: RunReport, failures: int, expected: timedelta | None) -> None:
    assert retries.retry_delay(report, failures, timedelta(hours=6)) == expected


def test_no_retry_due_at_half_the_interval_or_later() -> None:
    failed = make_report(Job.REFRESH, error="boom")
    assert retries.retry_delay(failed, 7, timedelta(minutes=60)) is None  # 30 min >= 60/2
    assert retries.retry_delay(failed, 6, timedelta(minutes=60)) == timedelta(minutes=16)


async def test_crashed_run_is_recorded_and_retried(
    harness: RuntimeHarness, scheduler: AsyncIOScheduler
) -> None:
    """A bug in a job (not an AWS error) is reported as a failure; the daemon keeps going."""
    report = await harness.run(Job.REFRESH, RuntimeError("kaboom"))
    assert report is not None
    assert report.outcome.value == "failure"
    assert report.error == "RuntimeError: kaboom"
    status, body = harness.daemon.healthz()
    assert status == 503
    assert "kaboom" in body["reason"]
    assert scheduler.get_job("refresh-retry") is not None
    value = harness.registry.get_sample_value(
        P + "runs_total", {"task": "refresh", "outcome": "failure"}
    )
    assert value == 1.0


async def test_no_retry_when_the_next_tick_is_soon_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a 40 s interval, a 30 s retry is not worth it: the next tick comes anyway."""
    harness = RuntimeHarness(tmp_path, monkeypatch, "40s")
    scheduler = paused_scheduler(harness)
    try:
        await harness.run(Job.REFRESH, make_report(Job.REFRESH, error="boom"))
        assert scheduler.get_jobs() == []
    finally:
        scheduler.shutdown(wait=False)


async def test_no_run_and_no_retry_once_stopping(
    harness: RuntimeHarness, scheduler: AsyncIOScheduler
) -> None:
    harness.daemon.request_stop()
    harness.queue[Job.REFRESH].append(make_report(Job.REFRESH, error="boom"))
    assert await harness.daemon.run_job(Job.REFRESH) is None
    assert harness.queue[Job.REFRESH], "the job body ran while stopping"
    assert scheduler.get_jobs() == []


async def test_aws_calls_reach_the_metrics(harness: RuntimeHarness) -> None:
    harness.api.stats.record("GetResources", "success")
    harness.api.stats.record("GetResources", "denied")
    for outcome, expected in (("success", 1.0), ("denied", 1.0), ("throttled", 0.0)):
        value = harness.registry.get_sample_value(
            P + "aws_requests_total", {"operation": "GetResources", "outcome": outcome}
        )
        assert value == expected, outcome


async def test_graceful_stop_cancels_a_run_still_going_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Daemon.run() end to end in-process, with a 0.3 s stop deadline and a run that hangs."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    harness = RuntimeHarness(tmp_path, monkeypatch, "6h", stop_deadline=0.3)
    harness.daemon.ctx.clock = lambda: datetime.now(UTC)  # the scheduler runs on real time
    began, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(ctx: Context) -> RunReport:
        began.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    harness.bodies[Job.REFRESH] = hang
    settled: list[bool] = []  # the real one would freeze the test process's heap
    monkeypatch.setattr(runtime, "settle_heap", lambda: settled.append(began.is_set()))
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(harness.daemon.run())
    try:
        await asyncio.wait_for(began.wait(), timeout=5)
        assert settled == [False]  # once, when start-up is done and before the first run
        asked = loop.time()
        harness.daemon.request_stop(signal.SIGTERM)
        assert await asyncio.wait_for(task, timeout=5) == 0
        took = loop.time() - asked
        await asyncio.wait_for(cancelled.wait(), timeout=1)
    finally:
        task.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    assert 0.25 <= took < 3, took
    assert harness.daemon.health[Job.REFRESH].last_outcome is None  # a cancelled run is no run


def test_sd_notify_abstract_socket_and_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    name = f"spire-kms-reconciler-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1\nSTATUS=x") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=x"


@pytest.mark.integration
def test_metrics_address_in_use_is_a_configuration_error(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A taken listen address exits 2 with a message naming it, not a traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, port)
        done = subprocess.run(
            [sys.executable, "-m", "daemon", "run", "--config", str(config)],
            env=daemon_env(emulator, tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert f"metrics.listen_address 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


async def test_reload_with_changed_interval_runs_nothing_early(
    harness: RuntimeHarness, scheduler: AsyncIOScheduler
) -> None:
    """SIGHUP applies a new interval; it neither runs refresh at once nor delays reclaim."""
    daemon = harness.daemon
    daemon.schedule(scheduler)
    reclaim_at = scheduler.get_job("reclaim").next_run_time
    refresh_before = scheduler.get_job("refresh").next_run_time
    refresh = daemon.settings.refresh.model_copy(update={"interval": timedelta(hours=1)})
    new = daemon.settings.model_copy(update={"refresh": refresh})
    daemon._reload = lambda: (new, daemon.ctx.server_id)
    assert await daemon.reload_now()
    assert scheduler.get_job("refresh").next_run_time > refresh_before  # from now + 1h
    assert scheduler.get_job("reclaim").next_run_time == reclaim_at
    assert daemon.settings.refresh.interval == timedelta(hours=1)


def test_settle_heap_moves_start_up_objects_out_of_the_collectors_way() -> None:
    survivor = [object() for _ in range(1000)]
    try:
        runtime.settle_heap()
        assert gc.get_freeze_count() >= len(survivor)
    finally:
        gc.unfreeze()


# --- the clock: steps of the wall clock do not stall the schedule --------------------------------


async def test_a_backward_clock_step_moves_due_times_with_it() -> None:
    wall = [1_800_000_000.0]
    mono = [100.0]
    scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone="UTC")
    scheduler.start(paused=True)
    try:
        due = datetime.fromtimestamp(wall[0], UTC) + timedelta(minutes=30)
        scheduler.add_job(lambda: None, DateTrigger(run_date=due), id="job")
        watcher = ClockStepWatcher(scheduler, wall=lambda: wall[0], monotonic=lambda: mono[0])
        wall[0] += 10
        mono[0] += 10
        assert watcher.check() is None  # both moved on together: no step
        wall[0] -= 3600  # NTP steps the clock back an hour
        mono[0] += 5
        step = watcher.check()
        assert step is not None and round(step.total_seconds()) == -3605
        job = scheduler.get_job("job")
        assert job is not None
        # Still due 30 minutes after it was scheduled, on the monotonic clock.
        assert job.next_run_time == due - timedelta(seconds=3605)
        wall[0] += 7200  # and a step forward
        step = watcher.check()
        assert step is not None and round(step.total_seconds()) == 7200
        job = scheduler.get_job("job")
        assert job is not None and job.next_run_time == due + timedelta(seconds=3595)
        wall[0] += 1.5  # small drift is not a step
        assert watcher.check() is None
    finally:
        scheduler.shutdown(wait=False)


FAKETIME = next(
    (
        p
        for p in (
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        )
        if Path(p).exists()
    ),
    None,
)


@pytest.mark.skipif(
    FAKETIME is None, reason="libfaketime is not installed (apt-get install faketime)"
)
def test_a_clock_stepped_back_an_hour_does_not_stall_the_jobs(
    aws: Emulator, spawn: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """Under libfaketime the daemon's wall clock is stepped back an hour (its monotonic clock
    stays real, as an NTP step leaves it): the next refresh still comes after its interval."""
    assert FAKETIME is not None
    aws.spire_key(TD, SERVER, "x509-CA-A", last_update=1)
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    port = free_port()
    config = write_config(tmp_path, port)
    env = daemon_env(
        aws,
        tmp_path,
        LD_PRELOAD=FAKETIME,
        FAKETIME_TIMESTAMP_FILE=str(clock),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    daemon = spawn("run", "--config", str(config), env=env)
    try:
        first = daemon.wait_for("refresh_finished")
        clock.write_text("-1h\n")
        stepped = daemon.wait_for("clock_step", timeout=15)
        assert round(stepped["step_seconds"] / 60) == -60
        index = [e.get("event") for e in daemon.events()].index("clock_step")
        # Without the watcher the next refresh would come an hour later; allow the interval
        # plus the watcher's period and some slack.
        later = daemon.wait_for("refresh_finished", since=index, timeout=15)
        assert later["run_id"] != first["run_id"]
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.finish(timeout=DEADLINE) == 0, daemon.tail()


def test_a_reload_stuck_on_a_file_neither_freezes_the_daemon_nor_holds_its_stop(
    aws: Emulator, spawn: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """SIGHUP re-reads the settings in a thread: a spire_server_config that is a FIFO nobody
    writes (a hung mount, say) blocks that thread, not /healthz, and SIGTERM still ends the
    daemon at once."""
    aws.spire_key(TD, SERVER, "x509-CA-A", last_update=1)
    port = free_port()
    config = write_config(tmp_path, port)
    daemon = spawn("run", "--config", str(config), env=daemon_env(aws, tmp_path))
    try:
        daemon.poll_until("healthy", lambda: healthz(port)[0] == 200)
        fifo = tmp_path / "server.conf"
        os.mkfifo(fifo)
        config.write_text(f'spire_server_config = "{fifo}"\n' + config.read_text())
        daemon.signal(signal.SIGHUP)
        time.sleep(1)  # the reload thread is now blocked opening the FIFO
        started = time.monotonic()
        status, _ = healthz(port)
        assert status == 200
        assert time.monotonic() - started < 1
        assert "reloaded" not in [e.get("event") for e in daemon.events()]
    finally:
        daemon.signal(signal.SIGTERM)
        started = time.monotonic()
        assert daemon.finish(timeout=DEADLINE) == 0, daemon.tail()
    assert time.monotonic() - started < 10
