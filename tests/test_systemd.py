"""The unit of deploy/systemd under a real systemd: a Debian root booted with systemd-nspawn.

The project is installed into the container as docs/install.md says: the venv under /opt, the
unit as shipped, config.toml and the env file under /etc/spire-kms-reconciler, SPIRE's key
identifier file 0600 owned by a ``spire`` user (the service reads it through LoadCredential=).
The container shares the host's network: the daemon reaches the emulator and a stand-in SPIRE
health listener on the host's loopback, and the test scrapes its /metrics from the host. The one
change to the unit is a drop-in, as an operator would write it, that shortens the watchdog and
the restart delay so that the test does not wait minutes.

The tests run in file order against one booted container; each leaves the service as the next
expects. Skipped, with the reason, only when the machine cannot bootstrap or boot a container.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devtools import nspawn
from devtools.emulator import Emulator
from devtools.spire_health import SpireHealth

UNIT = "spire-kms-reconciler.service"
REPO = Path(__file__).resolve().parent.parent
TD = "systemd.example.org"
CONFIG = "/etc/spire-kms-reconciler/config.toml"

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Host:
    """What the test holds: the container, the emulator, the SPIRE stand-in, the settings."""

    def __init__(
        self,
        box: nspawn.Container,
        emu: Emulator,
        spire: SpireHealth,
        server_id: str,
        port: int,
    ) -> None:
        self.box = box
        self.emu = emu
        self.spire = spire
        self.port = port
        self.server_id = server_id
        self.metrics = f"http://127.0.0.1:{port}/metrics"
        self.keys: list[str] = []

    def show(self, *properties: str) -> dict[str, str]:
        return self.box.show(UNIT, *properties)

    def journal(self) -> list[str]:
        """The daemon's own lines (its SyslogIdentifier), oldest first."""
        out = self.box.sh("journalctl --boot --no-pager -o cat -t spire-kms-reconciler")
        return [line for line in out.splitlines() if line.strip()]

    def systemd_lines(self) -> str:
        """Everything the journal holds about the unit, systemd's own messages included."""
        return self.box.sh(f"journalctl --boot --no-pager -o cat -u {UNIT}")

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.journal()]

    def wait(self, condition: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(condition) and condition():
                return
            time.sleep(0.25)
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}\n" + self.systemd_lines()[-3000:]
        )


def _config(spire: SpireHealth, port: int, extra: str = "") -> str:
    return (
        f'trust_domain = "{TD}"\n'
        f'spire_health_url = "{spire.url}"\n'
        f"{extra}"
        "[metrics]\n"
        f'listen_address = "127.0.0.1:{port}"\n'
    )


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    try:
        wheel = nspawn.build_wheel(tmp_path_factory.mktemp("wheel"))
        box = nspawn.Container.boot(binds=[(wheel.parent, "/wheels")])
    except nspawn.NoNspawn as exc:
        pytest.skip(f"cannot run a container here: {exc}")
    port = _free_port()
    server_id = str(uuid.uuid4())
    with box, Emulator() as emu, SpireHealth() as spire:
        h = Host(box, emu, spire, server_id, port)
        now = datetime.now(UTC)
        for key_id, tagged in (("x509-CA-A", False), ("JWT-Signer-A", True)):
            h.keys.append(
                emu.spire_key(
                    TD,
                    server_id,
                    key_id,
                    last_update=int((now - timedelta(days=3)).timestamp()),
                    tagged=tagged,
                    created_at=now - timedelta(days=30),
                )
            )
        # docs/install.md, steps 1 to 5, with the wheel of this checkout.
        pip = f"{nspawn.VENV}/bin/pip install --quiet --no-deps --force-reinstall"
        box.sh(f"{pip} /wheels/{wheel.name}")
        box.sh("id spire >/dev/null 2>&1 || useradd --system --no-create-home spire")
        box.sh("install -d -m 0755 /opt/spire/data/server /etc/spire-kms-reconciler")
        box.write("/opt/spire/data/server/keyid", server_id, mode=0o600)
        box.sh("chown spire:spire /opt/spire/data/server/keyid")
        env = "".join(f"{k}={v}\n" for k, v in emu.env().items())
        box.write("/etc/spire-kms-reconciler/env", env, mode=0o600)
        box.write(CONFIG, _config(spire, port))
        unit = (REPO / "deploy" / "systemd" / UNIT).read_text(encoding="utf-8")
        box.write(f"/etc/systemd/system/{UNIT}", unit)
        box.write(
            f"/etc/systemd/system/{UNIT}.d/test.conf",
            "[Service]\nWatchdogSec=6s\nRestartSec=1s\n",
        )
        box.sh("systemctl daemon-reload && systemctl reset-failed")
        yield h
        box.run(f"systemctl stop {UNIT}", check=False)


def test_active_only_after_ready(host: Host) -> None:
    started = time.monotonic()
    # Type=notify: systemctl start returns once the daemon has sent READY=1.
    host.box.sh(f"systemctl start {UNIT}")
    state = host.show("ActiveState", "SubState", "StatusText", "NRestarts", "Type", "MainPID")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert state["Type"] == "notify"
    # The status line comes from the daemon's sd_notify: the notify socket works in the sandbox.
    assert state["StatusText"].startswith(("scheduler running", "refresh")), state
    assert state["NRestarts"] == "0"
    events = [e["event"] for e in host.events()]
    assert "started" in events  # logged right after READY=1
    uid = host.box.sh(f"awk '/^Uid:/ {{print $2}}' /proc/{state['MainPID']}/status").strip()
    assert uid.isdigit() and int(uid) != 0, f"the service runs as UID {uid!r}"
    assert host.show("UID")["UID"] == uid  # systemd's dynamic user
    assert time.monotonic() - started < 60
    print(host.box.run(f"systemctl status --no-pager {UNIT}", check=False).stdout)


def test_sandbox_in_force_and_reaches_aws_and_metrics(host: Host) -> None:
    props = host.show(
        "DynamicUser",
        "ProtectSystem",
        "PrivateUsers",
        "MemoryDenyWriteExecute",
        "NoNewPrivileges",
        "SystemCallFilter",
    )
    assert props["DynamicUser"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateUsers"] == "yes"
    assert props["MemoryDenyWriteExecute"] == "yes"
    assert props["NoNewPrivileges"] == "yes"
    # LoadCredential=: systemd's read-only copy of SPIRE's 0600 file, the daemon's only way in.
    copy = host.box.sh(f"cat /run/credentials/{UNIT}/spire-server-id")
    assert copy == host.server_id
    assert props["SystemCallFilter"]  # the allow-list is set
    # The refresh job runs at start: it reads SPIRE's server ID through the credential, asks the
    # SPIRE stand-in, migrates the legacy key and stamps both.
    host.wait(
        lambda: host.show("StatusText")["StatusText"].startswith("refresh success"),
        60,
        "the first refresh",
    )
    for arn in host.keys:
        tags = host.emu.tags(arn)
        assert tags.get("spire-server-id") == host.server_id, tags
        stamped = int(tags["spire-last-update"])
        assert abs(stamped - time.time()) < 120, tags
    with urllib.request.urlopen(host.metrics, timeout=5) as response:
        body = response.read().decode()
    assert re.search(
        r'spire_kms_reconciler_runs_total\{[^}]*outcome="success"[^}]*task="refresh"[^}]*\} 1\.0',
        body,
    ) or re.search(
        r'spire_kms_reconciler_runs_total\{[^}]*task="refresh"[^}]*outcome="success"[^}]*\} 1\.0',
        body,
    ), body[:2000]


def test_journal_holds_json_lines(host: Host) -> None:
    lines = host.journal()
    assert lines, "nothing in the journal"
    first = json.loads(lines[0])
    print("first journal line:", lines[0])
    assert {"event", "timestamp", "level"} <= first.keys(), first
    for line in lines:
        event = json.loads(line)  # every line the daemon wrote is one JSON object
        # APScheduler's INFO chatter (jobs added, runs started) stays out of the journal.
        assert not str(event.get("logger", "")).startswith("apscheduler"), event


def test_reload_applies_a_changed_setting(host: Host) -> None:
    before = len(host.journal())
    spire = host.spire
    host.box.write(CONFIG, _config(spire, host.port, "dry_run = true\n"))
    pid = host.show("MainPID")["MainPID"]
    host.box.sh(f"systemctl reload {UNIT}")
    host.wait(
        lambda: any(e["event"] == "reloaded" for e in host.events()[before:]), 20, "the reload"
    )
    reloaded = next(e for e in host.events()[before:] if e["event"] == "reloaded")
    assert reloaded["dry_run"] is True
    assert host.show("MainPID")["MainPID"] == pid  # reloaded in place, not restarted


def test_watchdog_kills_and_restarts_a_stopped_daemon(host: Host) -> None:
    pid = host.show("MainPID")["MainPID"]
    host.box.sh(f"kill -STOP {pid}")

    def restarted() -> bool:
        now = host.show("MainPID", "ActiveState")
        return now["ActiveState"] == "active" and now["MainPID"] not in (pid, "0")

    host.wait(restarted, 40, "the watchdog restart")
    assert host.show("NRestarts")["NRestarts"] == "1"
    assert "Watchdog timeout" in host.systemd_lines()


def test_stop_ends_within_timeout_with_exit_0(host: Host) -> None:
    timeout = float(host.show("TimeoutStopUSec")["TimeoutStopUSec"].rstrip("s") or 0)
    started = time.monotonic()
    host.box.sh(f"systemctl stop {UNIT}")
    took = time.monotonic() - started
    state = host.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert state["ActiveState"] == "inactive"
    assert state["Result"] == "success", state
    assert state["ExecMainStatus"] == "0", state
    assert took < timeout, f"stop took {took:.1f} s, TimeoutStopSec is {timeout:.0f} s"
    assert any(e["event"] == "stopped" for e in host.events())


def test_bad_settings_exit_2_and_are_not_restarted(host: Host) -> None:
    spire = host.spire
    host.box.write(CONFIG, _config(spire, host.port, 'no_such_setting = "x"\n'))
    host.box.sh(f"systemctl reset-failed {UNIT} || true")
    failed = host.box.run(f"systemctl start {UNIT}", check=False)
    assert failed.returncode != 0  # never READY=1: the start itself fails
    time.sleep(3)  # three times RestartSec=1s in the drop-in
    state = host.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert state["ActiveState"] == "failed", state
    assert state["ExecMainStatus"] == "2", state
    assert state["NRestarts"] == "0", state
    assert "no_such_setting" in host.systemd_lines()
    host.box.write(CONFIG, _config(spire, host.port))


def test_exposure_score_of_the_installed_unit(host: Host) -> None:
    out = host.box.sh(f"systemd-analyze security --no-pager {UNIT}")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match is not None, out[-1500:]
    assert float(match[1]) <= 1.5, out[-1500:]
