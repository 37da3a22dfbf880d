"""The systemd unit: its directives, verify, and its exposure score."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.deploy_common import (
    EXEC_START,
    MAX_EXPOSURE,
    ROOT,
    SYSTEMD_ANALYZE,
    UNIT,
    needs_systemd_analyze,
    run,
    unit_directives,
    values,
)

# --- systemd --------------------------------------------------------------------------------------


def test_unit_directives() -> None:
    unit = unit_directives(UNIT)
    one = {k: v[-1] for k in {k for k, _ in unit["Service"]} if (v := values(unit, "Service", k))}
    assert one["Type"] == "notify"
    assert one["ExecStart"] == EXEC_START
    # SIGHUP through the shell's builtin kill (tests/test_systemd.py runs it on a minimal root).
    assert one["ExecReload"] == """/bin/sh -c 'kill -HUP "$MAINPID"'"""
    assert one["WatchdogSec"]
    assert one["Restart"] == "on-failure"
    assert values(unit, "Unit", "StartLimitIntervalSec") and values(unit, "Unit", "StartLimitBurst")
    assert one.get("DynamicUser") == "yes" or one.get("User") == "spire-kms-reconciler"
    assert "User" not in one or one["User"] not in ("root", "0")
    assert one["EnvironmentFile"] == "-/etc/spire-kms-reconciler/env"
    assert one["StandardOutput"] == "journal"
    # SPIRE's key identifier file reaches the service read-only, and the daemon is told where.
    credential = one["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source.startswith("/opt/spire/data/server/")
    assert f"SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_FILE=%d/{name}" in values(
        unit, "Service", "Environment"
    )
    families = one["RestrictAddressFamilies"].split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert one["ProtectSystem"] == "strict"
    assert one["NoNewPrivileges"] == "yes"
    assert one["CapabilityBoundingSet"] == ""
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_unit_restart_stops_for_bad_settings() -> None:
    # Exit code 2 is bad configuration: restarting cannot fix it.
    unit = unit_directives(UNIT)
    assert "2" in " ".join(values(unit, "Service", "RestartPreventExitStatus")).split()


def _megabytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([KMG])", size).groups()  # type: ignore[union-attr]
    return int(number) * {"K": 1 / 1024, "M": 1.0, "G": 1024.0}[unit]


def test_unit_memory_limits_leave_room_above_the_measured_peak() -> None:
    # The benchmark measures the daemon's peak RSS in a 5,000-key trust domain; a limit close to
    # it would kill the daemon in every large reclaim.
    unit = unit_directives(UNIT)
    high, limit = (_megabytes(values(unit, "Service", k)[-1]) for k in ("MemoryHigh", "MemoryMax"))
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    peak = max(
        phase["peak_rss_mb"]
        for row in results["scenarios"]
        for phase in row["daemon"]["phases"].values()
    )
    assert 2 * peak <= high < limit, (peak, high, limit)


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: check a copy pointing at /bin/true.
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(f"ExecStart={EXEC_START}") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={EXEC_START}", "ExecStart=/bin/true --ignored"))
    assert SYSTEMD_ANALYZE is not None
    result = run(SYSTEMD_ANALYZE, "verify", str(copy))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify reports unknown keys and bad values as warnings with exit code 0: none allowed.
    assert UNIT.name not in output, output


@needs_systemd_analyze
def test_unit_exposure_score() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = run(SYSTEMD_ANALYZE, "security", "--offline=yes", str(UNIT))
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, output
    assert float(match[1]) <= MAX_EXPOSURE, output
