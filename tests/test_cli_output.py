"""The command line as a user meets it: JSON output, filters, --log-level, check's honesty,
--offline, Ctrl-C, a closed pipe, progress on long runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon import progress
from daemon.progress import Progress
from devtools.emulator import Emulator
from devtools.faultproxy import FaultProxy
from tests.cli_runs import run, write_config
from tests.world import SERVER, TD, own_key, tag_only_key

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PEER = "7f4e2a9c-1b3d-4c5e-8f6a-0b1c2d3e4f50"


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging: None) -> None:
    """Every test here runs the CLI in-process or resets logging after it."""


def _seed(aws: Emulator) -> dict[str, str]:
    now = datetime.now(UTC)
    old = now - timedelta(days=60)
    return {
        "own": own_key(aws, "x509-CA-A", 7, created_at=old),
        "stale": tag_only_key(aws, PEER, "x509-CA-A", 20, created_at=old),
    }


def test_once_json_is_one_document_and_a_dry_run_reads_planned(
    aws: Emulator, proxy: FaultProxy, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _seed(aws)
    code, out, err = run(capsys, "once", "--dry-run", "--output", "json", "--config", str(config))
    assert code == 0, err
    document = json.loads(out)
    assert document["exit_code"] == 0
    assert [r["job"] for r in document["runs"]] == ["refresh", "reclaim"]
    results = [r for run_ in document["runs"] for r in run_["results"]]
    assert results and {r["outcome"] for r in results} == {"planned"}
    reclaim = [r for r in results if r["key_arn"] == keys["stale"]]
    assert {r["server_id"] for r in reclaim} == {PEER}  # the key's server is named
    assert proxy.count("mutating") == 0


def test_text_report_names_the_server_of_a_reclaimed_key_and_says_planned(
    aws: Emulator, proxy: FaultProxy, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _seed(aws)
    code, out, _ = run(capsys, "once", "--dry-run", "--job", "reclaim", "--config", str(config))
    assert code == 0
    lines = [line for line in out.splitlines() if keys["stale"] in line]
    assert lines and all(line.split()[0] == "planned" for line in lines), out
    assert all(f"server {PEER}" in line for line in lines), out


def test_keys_filters_by_verdict_and_server(
    aws: Emulator, proxy: FaultProxy, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _seed(aws)
    argv = ("keys", "--output", "json", "--config", str(config))
    _, out, _ = run(capsys, *argv, "--verdict", "stale")
    assert [r["key_arn"] for r in json.loads(out)] == [keys["stale"]]
    _, out, _ = run(capsys, *argv, "--server", SERVER)
    assert [r["key_arn"] for r in json.loads(out)] == [keys["own"]]
    _, out, _ = run(capsys, *argv, "--server", SERVER, "--verdict", "stale")
    assert json.loads(out) == []
    _, out, _ = run(capsys, *argv)
    assert {r["key_arn"] for r in json.loads(out)} == set(keys.values())


def test_log_level_flag_overrides_the_settings(
    aws: Emulator, proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(aws)
    config = write_config(tmp_path, endpoint=proxy.endpoint_url, body='[log]\nlevel = "info"\n')
    _, _, err = run(
        capsys, "once", "--job", "refresh", "--log-level", "error", "--config", str(config)
    )
    assert '"level": "info"' not in err
    _, _, err = run(
        capsys, "--log-level", "debug", "once", "--job", "refresh", "--config", str(config)
    )
    assert '"level": "debug"' in err


def test_check_json_names_the_jobs_and_never_says_ok_for_what_did_not_run(
    aws: Emulator, proxy: FaultProxy, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No key in the trust domain: DescribeKey and ListResourceTags have nothing to ask about.
    code, out, _ = run(capsys, "check", "--output", "json", "--config", str(config))
    assert code == 0
    found = {p["permission"]: p for p in json.loads(out)["permissions"]}
    assert found["tag:GetResources"]["result"] == "ok"
    assert found["tag:GetResources"]["needed_by"] == ["refresh", "reclaim"]
    for name in ("kms:DescribeKey", "kms:ListResourceTags"):
        assert found[name]["result"] == "not probed", found[name]
        assert "no key of the trust domain" in found[name]["detail"]
    assert found["kms:ScheduleKeyDeletion"]["needed_by"] == ["reclaim"]
    assert found["kms:UpdateAlias"]["needed_by"] == ["refresh"]
    assert found["kms:UpdateAlias"]["result"] == "not probed"
    code, out, _ = run(capsys, "check", "--config", str(config))
    assert "kms:DescribeKey" in out and "ok (not probed" not in out


def test_check_without_reclaim_does_not_ask_for_its_permissions(
    aws: Emulator, proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(aws)
    config = write_config(
        tmp_path, endpoint=proxy.endpoint_url, body="[reclaim]\nenabled = false\n"
    )
    code, out, _ = run(capsys, "check", "--output", "json", "--config", str(config))
    assert code == 0
    found = {p["permission"]: p for p in json.loads(out)["permissions"]}
    assert "kms:ScheduleKeyDeletion" not in found
    assert "kms:ListResourceTags" not in found
    assert all(p["needed_by"] == ["refresh"] for p in found.values()), found
    assert found["kms:DescribeKey"]["result"] == "ok"


def test_check_offline_asks_nobody(
    aws: Emulator,
    proxy: FaultProxy,
    tmp_path: Path,
    config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "check", "--offline", "--config", str(config))
    assert code == 0
    assert "settings: ok" in out and "offline" in out
    assert proxy.count() == 0
    # A setting that would keep `run` from starting fails the offline check.
    bare = write_config(tmp_path, endpoint=proxy.endpoint_url)
    bare.write_text(bare.read_text().replace("assume_spire_alive = true\n", ""))
    code, _, err = run(capsys, "check", "--offline", "--config", str(bare))
    assert code == 2 and "spire_health_url" in err
    broken = tmp_path / "server.conf"
    broken.write_text('server { trust_domain = "example.org" \n')
    code, _, err = run(
        capsys,
        "check",
        "--offline",
        "--config",
        str(write_config(tmp_path, body=f'spire_server_config = "{broken}"\n')),
    )
    assert code == 2 and "server.conf" in err
    assert proxy.count() == 0


def _cli(config: Path, *argv: str, env: dict[str, str], stdout: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", *argv, "--config", str(config)],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


def _env(aws: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPIRE_KMS"))}
    return {**env, **aws.env()}


def test_ctrl_c_during_once_prints_the_report_and_exits_130(
    aws: Emulator, proxy: FaultProxy, config: Path
) -> None:
    _seed(aws)
    proxy.delay("TagResources", 3.0)
    proxy.delay("TagResource", 3.0)
    process = _cli(config, "once", env=_env(aws), stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while proxy.count("TagResources") + proxy.count("TagResource") == 0:
        assert time.monotonic() < deadline, "the run never reached its first write"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    assert "Traceback" not in err
    assert "refresh:" in out  # the run's report, with what was done so far
    assert "reclaim:" not in out  # the next job does not start
    assert proxy.count("ScheduleKeyDeletion") == 0


def test_a_closed_pipe_ends_quietly(aws: Emulator, proxy: FaultProxy, config: Path) -> None:
    _seed(aws)
    for argv in (("once", "--dry-run"), ("check",), ("keys",)):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line (`| head -0`)
        try:
            process = _cli(config, *argv, env=_env(aws), stdout=write)
        finally:
            os.close(write)
        _, err = process.communicate(timeout=60)
        assert "Traceback" not in err and "BrokenPipe" not in err, (argv, err)
        assert process.returncode == 141, (argv, err)


def test_progress_events_every_few_seconds() -> None:
    now = [0.0]
    seen: list[progress.Snapshot] = []
    tracker = Progress("reclaim", 100, seen.append, clock=lambda: now[0])
    for _ in range(40):
        now[0] += 0.25
        tracker.tick()
    snap = tracker.snapshot()
    assert (snap.done, snap.left) == (40, 60)
    assert snap.rate == pytest.approx(4.0)
    assert snap.eta == pytest.approx(15.0)
    assert len(seen) == 40 and seen[-1].done == 40
    assert "40/100 actions, 4.0/s, about 15s left" in snap.line()


def test_a_long_run_logs_progress(
    aws: Emulator,
    proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.now(UTC)
    for n in range(30):
        aws.spire_key(
            TD,
            f"{n:08d}-aaaa-4bbb-8ccc-000000000000",
            "x509-CA-A",
            last_update=int((now - timedelta(days=20)).timestamp()),
            created_at=now - timedelta(days=60),
            alias=False,
        )
    monkeypatch.setattr(progress, "EVERY", 0.0)  # an event after every action
    config = write_config(
        tmp_path,
        endpoint=proxy.endpoint_url,
        body="[reclaim]\nmax_reclaims = 30\nmax_reclaim_fraction = 1.0\n",
    )
    code, _, err = run(capsys, "once", "--job", "reclaim", "--dry-run", "--config", str(config))
    assert code == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    ticks = [e for e in events if e["event"] == "progress"]
    assert ticks, err[-2000:]
    assert all(e["job"] == "reclaim" and e["done"] + e["left"] == 60 for e in ticks), ticks[:3]
    assert [e["done"] for e in ticks] == sorted(e["done"] for e in ticks)


def _clean_env() -> dict[str, str]:
    """The environment without AWS's or the daemon's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPIRE_KMS"))}


def _python_module(
    module: str, *args: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the checkout, its output captured."""
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_make_emulator_serves_until_ctrl_c(tmp_path: Path) -> None:
    env = _clean_env()
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.standalone"],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    lines: list[str] = []
    while not any(line.startswith("Ctrl-C") for line in lines):
        line = process.stdout.readline()
        assert line, "the emulator ended before it was ready"
        lines.append(line)
    config = next(line.split()[-1] for line in lines if line.startswith("settings:"))
    exports = next(line for line in lines if "export " in line).split("export ")[1].split()
    listed = _python_module(
        "daemon",
        *("keys", "--output", "json", "--config", config),
        env={**env, **dict(e.split("=", 1) for e in exports)},
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 10  # the demo trust domain
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_make_demo_prints_reports_only() -> None:
    done = _python_module("devtools.demo", env=_clean_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr == ""  # log lines go to a file, not between the reports
    dry_run = done.stdout.split("=== once --dry-run")[1].split("===")[1]
    actions = [line.split()[0] for line in dry_run.splitlines() if line.startswith("    ")]
    assert actions and set(actions) <= {"planned", "finding"}, dry_run
    assert "\nexit code 4\n" in done.stdout
