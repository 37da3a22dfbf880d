"""The daemon's HTTP listener, on its event loop: Prometheus ``/metrics``; ``/healthz`` (503
unless the last refresh succeeded within two intervals: for alerting and for a supervisor that
should act on it); ``/livez`` (200 whenever the event loop answers: for a Kubernetes liveness or
readiness probe, which must not restart the daemon, or take its SPIRE pod out of service, because
AWS or SPIRE is failing)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

log = structlog.get_logger("daemon.http")

#: What /healthz answers: an HTTP status and a JSON body.
Health = Callable[[], tuple[int, dict[str, Any]]]


class ListenError(Exception):
    """The listener could not be opened (the address is taken, not local...)."""


class Endpoint:
    """``/metrics`` from a registry and ``/healthz`` from a callable, served by aiohttp."""

    def __init__(self, registry: CollectorRegistry, health: Health) -> None:
        self._registry = registry
        self._health = health
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _healthz(self, _: web.Request) -> web.Response:
        status, body = self._health()
        return web.Response(
            status=status, text=json.dumps(body) + "\n", content_type="application/json"
        )

    async def _livez(self, _: web.Request) -> web.Response:
        return web.Response(text='{"status": "ok"}\n', content_type="application/json")

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); return the port bound."""
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self._registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._livez)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(exc.strerror or str(exc)) from None
        self._runner = runner
        bound = [a for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2]
        self.port = int(bound[0][1]) if bound else port
        log.info("http_listening", host=host, port=self.port)
        return self.port

    async def stop(self) -> None:
        """Close the listener."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
