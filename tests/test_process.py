"""The `run` daemon as a process, against the emulator.

These tests start ``python -m daemon run --config <toml>`` with second-scale intervals, then judge
it only from the outside, as an operator would: /metrics and /healthz over HTTP, the JSON log lines
on stdout, the datagrams it sends to a NOTIFY_SOCKET, its signals and exit code, and the AWS state
read back from the emulator. They never sleep for a schedule: every wait polls for its condition
with a bounded deadline.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon import __version__, spire
from devtools.emulator import Emulator, free_port
from devtools.faultproxy import FaultProxy
from devtools.spire_health import SpireHealth
from tests.daemons import (
    DEADLINE,
    OPENER,
    SECRET,
    DaemonProcess,
    NotifySocket,
    Samples,
    daemon_env,
    healthz,
    http_get,
    sample,
    scrape,
    total,
    write_config,
)
from tests.world import PEER, SERVER, TD, own_key, tag_only_key

pytestmark = pytest.mark.integration
PEER2 = "5e0c2f4a-1111-4222-8333-444455556666"
SUMMARY_EVENTS = ("refresh_finished", "reclaim_finished")
SUMMARY_FIELDS = ("job", "outcome", "actions", "aws_calls", "duration_seconds", "run_id")


# --- the process: metrics, logs, stop, sd_notify, then `once` -------------------------------------


def test_run_serves_metrics_logs_notifies_and_stops(
    aws: Emulator, spawn: Callable[..., DaemonProcess], tmp_path: Path, spire_health: SpireHealth
) -> None:
    now = datetime.now(UTC)
    legacy = aws.spire_key(
        TD, SERVER, "x509-CA-A", last_update=None, tagged=False, created_at=now - timedelta(days=30)
    )
    own = own_key(aws, "JWT-Signer-A", 1)
    stale_peer = tag_only_key(aws, PEER, "x509-CA-A", 20)
    fresh_peer = tag_only_key(aws, PEER2, "x509-CA-A", 0)
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
    own_key(aws, "x509-CA-A", 1)
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
    own_key(aws, "x509-CA-A", 1)
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
    own_key(aws, "x509-CA-A", 1)
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
