"""The names the tests' worlds are built from: one trust domain, this server, its peers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devtools.emulator import Emulator

#: The trust domain of most tests (IAM policy templates are written for it too).
TD = "example.org"
#: Another trust domain, whose keys must never be touched.
OTHER_TD = "other.example.org"
#: This server (the daemon's own).
SERVER = "0b6a1bd4-2a5f-4a8b-9a4e-1f0e7c6d5a43"
#: A peer server of the same trust domain (usually dead: its keys are stale).
PEER = "d3f5c6a1-7b8e-4c2d-9f0a-123456789abc"
#: A peer that is alive.
LIVE_PEER = "11111111-2222-4333-8444-555555555555"

DAY = timedelta(days=1)


def ago(delta: timedelta) -> int:
    """A ``spire-last-update`` value (Unix seconds) that long before now."""
    return int((datetime.now(UTC) - delta).timestamp())


def tag_only_key(emu: Emulator, server: str, key_id: str, days: int | None, **options: Any) -> str:
    """A key of ``server`` in :data:`TD` with SPIRE's tags and no alias (as a peer's key looks to
    this server, or a tag-mode server's own), created 90 days ago, stamped ``days`` days ago
    (None: never). ``options`` are :meth:`Emulator.spire_key`'s other options. Returns its ARN."""
    options.setdefault("created_at", datetime.now(UTC) - 90 * DAY)
    stamp = None if days is None else ago(days * DAY)
    return emu.spire_key(TD, server, key_id, last_update=stamp, alias=False, **options)


def own_key(emu: Emulator, key_id: str, hours: int | None, **options: Any) -> str:
    """A key of :data:`SERVER` as SPIRE leaves it: SPIRE's alias points to it, created 30 days
    ago, stamped ``hours`` hours ago (None: never). ``options`` are :meth:`Emulator.spire_key`'s
    other options. Returns its ARN."""
    options.setdefault("created_at", datetime.now(UTC) - 30 * DAY)
    stamp = None if hours is None else ago(timedelta(hours=hours))
    return emu.spire_key(TD, SERVER, key_id, last_update=stamp, **options)
