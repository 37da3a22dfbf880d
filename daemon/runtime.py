"""The long-running daemon: APScheduler jobs, retries, reloads, signals and a graceful stop.

The HTTP listener is :mod:`daemon.http`, systemd's side :mod:`daemon.systemd`, and the guard
against wall-clock steps :mod:`daemon.clocksteps`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon import logs
from daemon.aio import in_daemon_thread
from daemon.aws.client import AwsApi
from daemon.clocksteps import ClockStepWatcher
from daemon.durations import format_duration
from daemon.http import Endpoint, ListenError
from daemon.jobs import Context, log_summary
from daemon.metrics import Metrics
from daemon.model import Job, JobName, Outcome, RunReport
from daemon.registry import JOBS, JobSpec
from daemon.retries import crashed_report, needs_retry, retry_delay
from daemon.settings import Settings, settings_warnings
from daemon.systemd import sd_notify, watchdog

log = structlog.get_logger("daemon.runtime")
T = TypeVar("T")


def settle_heap() -> None:
    """Collect start-up garbage, then move what is left (modules, the AWS clients' service models,
    settings) to the collector's permanent generation.

    A full collection otherwise walks every object the process has, and it runs on the event loop
    that also answers /metrics: on a 5,000-key run that pause is the longest one. After this, a
    collection walks only what jobs allocate. Called once, when start-up is done.
    """
    gc.collect()
    gc.freeze()


class StartupError(Exception):
    """The daemon cannot start (for example, its metrics address is taken)."""


@dataclass(slots=True)
class JobHealth:
    """What /healthz and the retry logic need to know about one job."""

    last_outcome: Outcome | None = None
    last_finished: datetime | None = None
    last_success: datetime | None = None
    failures_in_a_row: int = 0
    last_error: str | None = None


class Daemon:
    """Runs the refresh and reclaim jobs on a schedule until told to stop."""

    def __init__(
        self,
        ctx: Context,
        metrics: Metrics,
        *,
        reload: Callable[[], tuple[Settings, str]] | None = None,
        stop_deadline: float = 30.0,
        jobs: Sequence[JobSpec] = JOBS,
    ) -> None:
        self.ctx = ctx
        self.jobs = tuple(jobs)
        self.metrics = metrics
        self._reload = reload
        self._stop_deadline = stop_deadline
        self._stop = asyncio.Event()
        self._started_with = ctx.settings
        self._pending_restart: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._signals = 0
        self._running: dict[JobName, asyncio.Task[Any]] = {}
        self.health: dict[JobName, JobHealth] = {spec.name: JobHealth() for spec in self.jobs}
        self.scheduler: AsyncIOScheduler | None = None
        self._http: Endpoint | None = None
        self.bound_port: int | None = None
        self._reloading = asyncio.Lock()
        ctx.api.stats.subscribe(metrics.on_aws_call)

    @property
    def settings(self) -> Settings:
        """The settings in force (they change on SIGHUP)."""
        return self.ctx.settings

    # --- HTTP ----------------------------------------------------------------------------------

    def healthz(self, now: datetime | None = None) -> tuple[int, dict[str, Any]]:
        """Return (status, body): 200 while the last refresh succeeded within two intervals."""
        now = now or self.ctx.clock()
        refresh = self.health[Job.REFRESH]
        limit = 2 * self.settings.refresh.interval
        body: dict[str, Any] = {
            "last_refresh_outcome": refresh.last_outcome.value if refresh.last_outcome else None,
            "last_refresh_success": refresh.last_success.isoformat()
            if refresh.last_success
            else None,
        }
        if refresh.last_outcome is None:
            return 503, {"status": "starting", "reason": "no refresh has finished yet", **body}
        if refresh.last_outcome is not Outcome.SUCCESS:
            reason = f"the last refresh ended with {refresh.last_outcome.value}"
            if refresh.last_error:
                reason += f": {refresh.last_error[:300]}"
            return 503, {"status": "unhealthy", "reason": reason, **body}
        assert refresh.last_success is not None
        if now - refresh.last_success > limit:
            return 503, {
                "status": "unhealthy",
                "reason": f"no successful refresh for more than {limit}",
                **body,
            }
        return 200, {"status": "ok", **body}

    async def start_http(self) -> None:
        """Serve /metrics and /healthz on the event loop, at ``metrics.listen_address``."""
        if not self.settings.metrics.enabled:
            return
        address = self.settings.metrics
        self._http = Endpoint(self.metrics.registry, self.healthz)
        try:
            self.bound_port = await self._http.start(address.host, address.port)
        except ListenError as exc:
            self._http = None
            raise StartupError(
                f"cannot listen on metrics.listen_address {address.listen_address}: {exc}"
            ) from None

    async def stop_http(self) -> None:
        """Close the /metrics and /healthz listener, if it is open."""
        if self._http is not None:
            await self._http.stop()
            self._http = None

    # --- jobs ----------------------------------------------------------------------------------

    async def run_job(self, job: JobName) -> RunReport | None:
        """Run one job now (skipped while stopping), record it and schedule a retry if needed."""
        if self._stop.is_set():
            return None
        running = self._running.get(job)
        if running is not None and not running.done():
            # A retry and a scheduled tick are separate scheduler jobs: never run both at once.
            log.info("run_skipped", job=job, detail="a run of this job is in progress")
            return None
        task = asyncio.current_task()
        assert task is not None
        self._running[job] = task
        try:
            with structlog.contextvars.bound_contextvars(run_id=uuid.uuid4().hex[:12], job=job):
                try:
                    report = await self._spec(job).once(self.ctx)
                except Exception as exc:  # a bug, not an AWS failure: report it, keep serving
                    log.exception("run_crashed")
                    report = crashed_report(job, self.ctx.clock(), exc)
                    log_summary(report)
        finally:
            self._running.pop(job, None)
        self._record(report)
        return report

    def _record(self, report: RunReport) -> None:
        finished = self.ctx.clock()
        self.metrics.observe(report, finished.timestamp())
        health = self.health[report.job]
        health.last_outcome = report.outcome
        health.last_finished = finished
        health.last_error = report.error or report.plan.failure or report.plan.refusal_detail
        if report.outcome is Outcome.SUCCESS:
            health.last_success = finished
        sd_notify(f"STATUS={report.job} {report.outcome.value} at {finished:%H:%M:%S}Z")
        # A SPIRE server that is not alive is asked again soon (each retry is one HTTP GET and
        # no AWS call), so that its keys are stamped soon after it is back.
        if not needs_retry(report):
            health.failures_in_a_row = 0
            return
        health.failures_in_a_row += 1
        delay = retry_delay(report, health.failures_in_a_row, self._interval(report.job))
        if delay is None:
            return
        if self.scheduler is not None and not self._stop.is_set():
            self.scheduler.add_job(
                self.run_job,
                DateTrigger(run_date=finished + delay),
                args=[report.job],
                id=f"{report.job}-retry",
                replace_existing=True,
                max_instances=1,
                misfire_grace_time=None,
            )
            log.warning(
                "run_retry_scheduled",
                retry_in_seconds=delay.total_seconds(),
                failures_in_a_row=health.failures_in_a_row,
            )

    def _spec(self, job: JobName) -> JobSpec:
        return next(j for j in self.jobs if j.job is job)

    def _interval(self, job: JobName) -> timedelta:
        return self._spec(job).interval(self.settings)

    def export_intervals(self) -> None:
        """Publish each enabled task's interval, which the alerts compare ages with."""
        s = self.settings
        self.metrics.set_intervals(
            {j.job: j.interval(s).total_seconds() if j.enabled(s) else None for j in self.jobs}
        )

    def _add(self, scheduler: AsyncIOScheduler, job: JobSpec, first_run: datetime) -> None:
        s = self.settings
        scheduler.add_job(
            self.run_job,
            _trigger(job.interval(s), job.jitter(s)),
            args=[job.job],
            id=job.name,
            replace_existing=True,
            next_run_time=first_run,
        )

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        """Create one interval job per enabled job, each first run after its start delay (the
        refresh at once)."""
        self.export_intervals()
        now = self.ctx.clock()
        for job in self.jobs:
            if job.enabled(self.settings):
                self._add(scheduler, job, now + job.start_delay(self.settings))

    def reschedule(self, scheduler: AsyncIOScheduler, old: Settings) -> None:
        """Apply changed schedules after a reload, without running anything early: a job
        turned off is removed, one turned on waits for its start delay."""
        new = self.settings
        for job in self.jobs:
            enabled, interval, jitter = job.timing(new)
            scheduled = scheduler.get_job(job.name) is not None
            if not enabled:
                if scheduled:
                    scheduler.remove_job(job.name)
            elif not scheduled:
                self._add(scheduler, job, self.ctx.clock() + job.start_delay(new))
            elif job.timing(old) != (enabled, interval, jitter):
                scheduler.reschedule_job(job.name, trigger=_trigger(interval, jitter))

    # --- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None) -> None:
        """First signal: stop gracefully. Second: exit at once."""
        self._signals += 1
        if self._signals > 1:
            log.warning("stop_forced", signal=signum)
            os._exit(130)
        log.info("stopping", signal=signum, deadline_seconds=self._stop_deadline)
        sd_notify("STOPPING=1")
        self.ctx.api.stopping = True
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the settings in a worker thread (a slow or stuck file read must not
        freeze /healthz, the watchdog or SIGTERM), then apply them on the loop."""
        task = asyncio.get_running_loop().create_task(self.reload_now(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload_now(self) -> bool:
        """Re-read and apply the settings; keep the old ones, and say why, when the new ones are
        invalid. One reload at a time. Returns whether the new settings are in force."""
        if self._reload is None:
            return False
        async with self._reloading:
            try:
                settings, server_id = await in_daemon_thread(self._reload)
            except Exception as exc:
                log.error("reload_rejected", error=str(exc), detail="keeping the settings in force")
                return False
            self.apply(settings, server_id)
            return True

    def apply(self, settings: Settings, server_id: str) -> None:
        """Put new settings in force: logging, intervals and dry run at once (a dry run is
        honoured before the next write, even within a run); region, [aws] and [metrics] at the
        next start. Notes of what waits for a restart accumulate until then."""
        old = self.settings
        if settings.region != self._started_with.region or settings.aws != self._started_with.aws:
            self._pending_restart.add("region and [aws] take effect on restart")
        else:
            self._pending_restart.discard("region and [aws] take effect on restart")
        if settings.metrics != self._started_with.metrics:
            self._pending_restart.add("[metrics] takes effect on restart")
        else:
            self._pending_restart.discard("[metrics] takes effect on restart")
        self.ctx.settings = settings
        self.ctx.server_id = server_id
        if settings.log != old.log:
            logs.configure(settings.log.format, settings.log.level)
        if self.scheduler is not None:
            self.reschedule(self.scheduler, old)
        self.export_intervals()
        for warning in settings_warnings(settings):
            log.warning("settings_warning", detail=warning)
        log.info("reloaded", notes=sorted(self._pending_restart), dry_run=settings.dry_run)

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start_http()
        settle_heap()
        self.scheduler = AsyncIOScheduler(
            event_loop=loop,
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone="UTC",
        )
        self.schedule(self.scheduler)
        self.scheduler.start()
        tasks = [
            asyncio.create_task(watchdog(self._stop), name="watchdog"),
            asyncio.create_task(ClockStepWatcher(self.scheduler).watch(self._stop), name="clock"),
        ]
        sd_notify("READY=1\nSTATUS=scheduler running")
        log.info(
            "started",
            trust_domain=self.ctx.trust_domain,
            server_id=self.ctx.server_id,
            refresh_interval=format_duration(self.settings.refresh.interval),
            reclaim_interval=format_duration(self.settings.reclaim.interval),
            dry_run=self.ctx.dry_run or self.settings.dry_run,
        )
        for warning in settings_warnings(self.settings):
            log.warning("settings_warning", detail=warning)
        await self._stop.wait()
        await self._shutdown()
        for task in tasks:
            task.cancel()
        return 0

    async def _shutdown(self) -> None:
        assert self.scheduler is not None
        self.scheduler.pause()
        running = [t for t in self._running.values() if not t.done()]
        if running:
            log.info("waiting_for_running_job", jobs=list(self._running))
            _, pending = await asyncio.wait(running, timeout=self._stop_deadline)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("running_job_cancelled", deadline_seconds=self._stop_deadline)
        self.scheduler.shutdown(wait=False)
        await self.stop_http()
        log.info("stopped")


def _trigger(interval: timedelta, jitter: float) -> IntervalTrigger:
    seconds = max(1, int(interval.total_seconds()))
    spread = int(seconds * jitter)
    return IntervalTrigger(seconds=seconds, jitter=spread or None, timezone="UTC")


async def serve(
    settings: Settings,
    server_id: str,
    api: AwsApi,
    *,
    reload: Callable[[], tuple[Settings, str]] | None = None,
    metrics: Metrics | None = None,
) -> int:
    """Run the daemon with an open AWS API until it is told to stop; return the exit code."""
    daemon = Daemon(
        Context(settings, server_id, api),
        metrics or Metrics(jobs=[spec.name for spec in JOBS]),
        reload=reload,
    )
    return await daemon.run()
