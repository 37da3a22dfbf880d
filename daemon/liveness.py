"""Whether the local SPIRE server is alive: one HTTP GET of its health endpoint.

A stamp written from outside SPIRE proves only that the daemon lives, so the refresh job asks the
SPIRE server first (SPIRE's ``health_checks`` listener, ``/live`` by default) and writes nothing
unless it answers 2xx. The probe never follows a redirect and never uses an HTTP proxy from the
environment (``HTTPS_PROXY`` is for AWS; the health endpoint is local).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Awaitable, Callable

import aiohttp

from daemon.model import Liveness, ProbeFailure

__all__ = ["ASSUMED_ALIVE", "MAX_TIMEOUT", "NOT_CONFIGURED", "Probe", "probe", "probe_for"]

#: The longest a probe may wait for an answer (contract §4).
MAX_TIMEOUT = 5.0
_BODY_SHOWN = 200

#: What the refresh job sees when ``assume_spire_alive`` is set: no probe, taken as alive.
ASSUMED_ALIVE = Liveness(True, "not probed: assume_spire_alive = true")
#: What it sees when nothing says how to tell: never alive.
NOT_CONFIGURED = Liveness(
    False,
    "no spire_health_url and assume_spire_alive is false: cannot tell whether SPIRE is alive",
    failure=ProbeFailure.NOT_CONFIGURED,
)

#: A probe of the local SPIRE server, as the refresh job calls it.
Probe = Callable[[], Awaitable[Liveness]]


def _refused(exc: BaseException) -> bool:
    os_error = getattr(exc, "os_error", None)
    code = getattr(os_error, "errno", None) or getattr(exc, "errno", None)
    return code == errno.ECONNREFUSED or "connection refused" in str(exc).lower()


async def probe(url: str, wait_seconds: float = MAX_TIMEOUT) -> Liveness:
    """GET ``url`` once; alive when it answers 2xx within ``wait_seconds`` (at most 5)."""
    timeout = min(wait_seconds, MAX_TIMEOUT)
    started = time.monotonic()

    def took() -> str:
        return f"{(time.monotonic() - started) * 1000:.0f} ms"

    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False
            ) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            status = response.status
            if 200 <= status < 300:
                return Liveness(True, f"HTTP {status} from {url} in {took()}", url, status=status)
            body = (await response.content.read(_BODY_SHOWN)).decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ServerTimeoutError):
        return Liveness(
            False, f"no answer from {url} within {timeout:g}s", url, ProbeFailure.TIMEOUT
        )
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        if _refused(exc):
            return Liveness(
                False, f"connection refused by {url}", url, ProbeFailure.CONNECTION_REFUSED
            )
        reason = str(exc) or type(exc).__name__
        return Liveness(False, f"cannot reach {url}: {reason[:200]}", url, ProbeFailure.UNREACHABLE)
    shown = " ".join(body.split())
    detail = f"HTTP {status} from {url} in {took()}" + (f": {shown}" if shown else "")
    return Liveness(False, detail, url, ProbeFailure.HTTP_STATUS, status)


def probe_for(url: str | None, assume_alive: bool, timeout: float = MAX_TIMEOUT) -> Probe:
    """The probe the settings ask for: the URL's, assumed alive, or never alive."""
    if url is not None:

        async def http() -> Liveness:
            return await probe(url, timeout)

        return http

    fixed = ASSUMED_ALIVE if assume_alive else NOT_CONFIGURED

    async def constant() -> Liveness:
        return fixed

    return constant
