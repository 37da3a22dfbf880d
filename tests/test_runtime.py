"""The `run` daemon in-process (daemon.runtime.Daemon): /healthz decisions, the retry
scheduling after a failed run, sd_notify, the metrics listener and the heap settling, with a fake
clock and fake job bodies.
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
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from prometheus_client import CollectorRegistry

from daemon import retries, runtime
from daemon.aws.stats import CallStats
from daemon.jobs import Context
from daemon.metrics import Metrics
from daemon.model import Job, JobName, Liveness, Plan, Refusal, RunReport
from daemon.registry import JOBS
from daemon.runtime import Daemon
from daemon.settings import load_settings
from daemon.systemd import sd_notify
from devtools.emulator import Emulator
from tests.daemons import (
    P,
    daemon_env,
    write_config,
)
from tests.world import TD

pytestmark = pytest.mark.integration


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
        self.queue: dict[JobName, list[RunReport | Exception]] = {j.job: [] for j in JOBS}
        # The registry's jobs, each running what the test queued instead of its real body.
        self.bodies = {j.job: self._body(j.job) for j in JOBS}
        jobs = [replace(j, once=self._call(j.job)) for j in JOBS]
        self.daemon = Daemon(ctx, Metrics(self.registry), stop_deadline=stop_deadline, jobs=jobs)
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    def _call(self, job: JobName) -> Callable[[Context], Any]:
        async def call(ctx: Context) -> RunReport:
            return await self.bodies[job](ctx)  # type: ignore[no-any-return]

        return call

    def _body(self, job: JobName) -> Callable[[Context], Any]:
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
