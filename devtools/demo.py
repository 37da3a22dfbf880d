"""``make demo``: the daemon's jobs against an embedded KMS emulator and a demo trust domain.

The emulator is a moto server in this process. The demo trust domain ``demo.example.org`` holds:

* this server: one legacy alias-managed key (no SPIRE tags yet), one tagged key refreshed three
  days ago, and an older superseded key for the same SPIRE key ID;
* a live peer, refreshed an hour ago;
* a dead peer, last refreshed twenty days ago;
* decoys: another trust domain's stale key, a stale key with a malformed timestamp, a protected
  stale key, and a few hundred unrelated keys and aliases of other teams.

A stand-in for this server's SPIRE health listener answers alive. The demo runs ``once``
(refresh, then reclaim), then ``once`` again to show that nothing is left to migrate or reclaim,
lists the keys, then stops the SPIRE stand-in and shows the next refresh refusing to write
anything for a SPIRE server that is not alive.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from daemon.cli import main
from devtools.emulator import Emulator
from devtools.spire_health import SpireHealth

TRUST_DOMAIN = "demo.example.org"
LIVE_PEER = "11111111-2222-4333-8444-555555555555"
DEAD_PEER = "99999999-8888-4777-8666-555555555555"


def seed(emu: Emulator, server_id: str, now: datetime) -> None:
    """Create the demo trust domain's keys."""
    hour, day = timedelta(hours=1), timedelta(days=1)
    old = now - 90 * day

    def ts(delta: timedelta) -> int:
        return int((now - delta).timestamp())

    # This server: a legacy alias-managed key, a tagged serving key, and a superseded one.
    emu.spire_key(
        TRUST_DOMAIN,
        server_id,
        "x509-CA-A",
        last_update=None,
        tagged=False,
        created_at=now - 30 * day,
    )
    emu.spire_key(
        TRUST_DOMAIN, server_id, "JWT-Signer-A", last_update=ts(3 * day), created_at=now - 20 * day
    )
    emu.spire_key(
        TRUST_DOMAIN,
        server_id,
        "JWT-Signer-A",
        last_update=ts(3 * day),
        alias=False,
        created_at=now - 40 * day,
    )
    # A live peer.
    for key_id in ("x509-CA-A", "JWT-Signer-A"):
        emu.spire_key(TRUST_DOMAIN, LIVE_PEER, key_id, last_update=ts(hour), created_at=old)
    # A dead peer. (The emulator's aliases carry no LastUpdatedDate, which the daemon reads as
    # "maybe in use", so the dead peer's aliases are left out here.)
    for key_id in ("x509-CA-A", "x509-CA-B", "JWT-Signer-A"):
        emu.spire_key(
            TRUST_DOMAIN, DEAD_PEER, key_id, last_update=ts(20 * day), alias=False, created_at=old
        )
    # Decoys.
    emu.spire_key(
        "other.example.org",
        DEAD_PEER,
        "x509-CA-A",
        last_update=ts(60 * day),
        alias=False,
        created_at=old,
    )
    emu.spire_key(
        TRUST_DOMAIN,
        DEAD_PEER,
        "WIT-Signer-A",
        last_update=None,
        alias=False,
        created_at=old,
        extra_tags={"spire-last-update": "2026-01-01T00:00:00Z"},
    )
    emu.spire_key(
        TRUST_DOMAIN,
        DEAD_PEER,
        "WIT-Signer-B",
        last_update=ts(30 * day),
        alias=False,
        created_at=old,
        extra_tags={"spire-protect": "true"},
    )
    emu.foreign_keys(300, aliases_every=3)


def settings_file(folder: Path, server_id: str, spire: SpireHealth, extra: str = "") -> Path:
    """Write this server's key identifier file and a settings file for the demo trust domain
    into ``folder``; return the settings file."""
    keyid = folder / "keyid"
    keyid.write_text(server_id)
    config = folder / "config.toml"
    config.write_text(
        f'trust_domain = "{TRUST_DOMAIN}"\n'
        'region = "us-east-1"\n'
        f'key_identifier_file = "{keyid}"\n'
        f'spire_health_url = "{spire.url}"\n' + extra
    )
    return config


def banner(title: str) -> None:
    """Print a section title."""
    print(f"\n=== {title} ===", flush=True)


def run() -> int:
    """Start the emulator, seed it, run the jobs and print what they did."""
    now = datetime.now(UTC)
    server_id = str(uuid.uuid4())
    with (
        Emulator() as emu,
        SpireHealth() as spire,
        tempfile.TemporaryDirectory(prefix="spire-kms-demo-") as tmp,
    ):
        os.environ.update(emu.env())
        config = settings_file(Path(tmp), server_id, spire)
        seed(emu, server_id, now)
        print(
            f"emulator: {emu.endpoint_url}   trust domain: {TRUST_DOMAIN}   "
            f"this server: {server_id}"
        )
        print(f"SPIRE server (stand-in health listener): {spire.url}")
        events = Path(tmp) / "events.jsonl"
        print(f"settings: {config}")
        print(
            "log events (JSON lines) go to a file, so that they do not interleave with the reports"
        )

        def cli(*argv: str) -> int:
            with events.open("a") as sink, contextlib.redirect_stderr(sink):
                return main([*argv, "--config", str(config)])

        banner("keys before")
        cli("keys")
        banner("once --dry-run (decide and print, change nothing: every action reads planned)")
        cli("once", "--dry-run")
        banner("once (refresh, then reclaim)")
        code = cli("once")
        banner("once again (nothing left to migrate or reclaim; serving keys are stamped again)")
        cli("once")
        banner("keys after")
        cli("keys")
        banner("the SPIRE server stops: the next refresh writes nothing for it (exit code 4)")
        spire.set("closed")
        refused = cli("once", "--job", "refresh")
        print(f"exit code {refused}")
        lines = events.read_text().splitlines()
        loud = [
            line for line in lines if '"level": "warning"' in line or '"level": "error"' in line
        ]
        print(f"\n{len(lines)} log events, {len(loud)} warnings or errors; the last one:")
        print(f"  {loud[-1] if loud else '-'}")
        return code if refused == 4 else 1


if __name__ == "__main__":
    sys.exit(run())
