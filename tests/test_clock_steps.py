"""Steps of the wall clock (NTP, a VM resumed) do not stall the schedule: in-process with a fake
clock, and in a real process whose clock libfaketime steps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from daemon.clocksteps import ClockStepWatcher
from devtools.emulator import Emulator, free_port
from tests.daemons import (
    DEADLINE,
    DaemonProcess,
    daemon_env,
    healthz,
    write_config,
)
from tests.world import SERVER, TD

pytestmark = pytest.mark.integration


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
