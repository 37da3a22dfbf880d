"""systemd's side of the daemon: readiness and status notifications, and the watchdog."""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger("daemon.systemd")


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's notification socket, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False
    return True


async def watchdog(stop: asyncio.Event) -> None:
    """Ping systemd's watchdog every WATCHDOG_USEC / 2 from the event loop until ``stop``.

    A loop that stops turning stops the pings, and systemd restarts the service.
    """
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0:
        return
    period = usec / 2_000_000
    while not stop.is_set():
        sd_notify("WATCHDOG=1")
        try:
            await asyncio.wait_for(stop.wait(), timeout=period)
        except TimeoutError:
            continue
