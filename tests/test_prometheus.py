"""The alerting rules and the dashboard against a real Prometheus server (Debian's ``prometheus``).

Two daemons run against the emulator, each beside its own stand-in SPIRE health listener, and a
Prometheus on loopback scrapes both with deploy/prometheus/scrape.yml (targets and intervals
adapted) and evaluates deploy/prometheus/alerts.yml (``for:`` durations shortened, expressions
unchanged). Then one daemon is stopped and the other's SPIRE server stops answering alive; the
test asks Prometheus's HTTP API which alerts are pending or firing, and for which instance.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.emulator import Emulator, free_port
from devtools.spire_health import SpireHealth
from tests.daemons import OPENER, ROOT, DaemonProcess, daemon_env
from tests.world import TD

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus server is not installed (Debian/Ubuntu: apt-get install prometheus)",
)
SERVERS = {"a": "0b6a1bd4-2a5f-4a8b-9a4e-1f0e7c6d5a43", "b": "d3f5c6a1-7b8e-4c2d-9f0a-123456789abc"}
FOR = "2s"  # every alert's `for:`, shortened
WAIT = 60.0


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with OPENER.open(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def until(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout}s (last: {last!r})")


def write_daemon_config(directory: Path, name: str, port: int, spire_url: str) -> Path:
    directory.mkdir()
    keyid = directory / "keyid"
    keyid.write_text(SERVERS[name])
    path = directory / "config.toml"
    path.write_text(
        f'trust_domain = "{TD}"\nregion = "us-east-1"\nkey_identifier_file = "{keyid}"\n'
        f'spire_health_url = "{spire_url}"\nspire_health_timeout = "1s"\n'
        '[refresh]\ninterval = "2s"\nalias_scan_interval = "2s"\njitter = 0\n'
        '[reclaim]\ninterval = "3s"\nstart_delay = "1s"\njitter = 0\n'
        f'[metrics]\nlisten_address = "127.0.0.1:{port}"\n'
        "[aws]\nmax_attempts = 2\nmutating_calls_per_second = 50\n"
        '[log]\nformat = "json"\nlevel = "warning"\n'
    )
    return path


def prometheus_config(directory: Path, targets: list[str]) -> Path:
    """deploy/prometheus's scrape job and rules, with these targets and second-scale timing."""
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/scrape.yml").read_text(encoding="utf-8"))
    (job,) = scrape["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    rules = (ROOT / "deploy/prometheus/alerts.yml").read_text(encoding="utf-8")
    shortened, count = re.subn(r"(?m)^(\s+for: )\S+$", rf"\g<1>{FOR}", rules)
    assert count >= 8, "alerts.yml changed shape: update this test"
    (directory / "alerts.yml").write_text(shortened, encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [job],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    """Start Prometheus for the given targets; yields its base URL. Stopped at teardown."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> str:
        assert PROMETHEUS is not None
        directory = tmp_path / "prometheus"
        directory.mkdir()
        config = prometheus_config(directory, targets)
        port = free_port()
        log = (directory / "prometheus.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        base = f"http://127.0.0.1:{port}"
        until("Prometheus ready", lambda: OPENER.open(f"{base}/-/ready", timeout=2).status == 200)
        return base

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def active_alerts(base: str) -> set[tuple[str, str, str]]:
    """(alert name, instance, state) of every pending or firing alert."""
    return {
        (a["labels"]["alertname"], a["labels"].get("instance", ""), a["state"])
        for a in api(base, "/api/v1/alerts")["alerts"]
    }


@needs_prometheus
def test_alerts_fire_for_the_right_instance_and_no_other(
    aws: Emulator,
    spawn: Callable[..., DaemonProcess],
    prometheus: Callable[[list[str]], str],
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    for server in SERVERS.values():
        for key_id in ("x509-CA-A", "JWT-Signer-A"):
            aws.spire_key(
                TD, server, key_id, last_update=int((now - timedelta(hours=1)).timestamp())
            )
    ports = {name: free_port() for name in SERVERS}
    instances = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    with SpireHealth() as spire_a, SpireHealth() as spire_b:
        spires = {"a": spire_a, "b": spire_b}
        daemons = {
            name: spawn(
                "run",
                "--config",
                str(write_daemon_config(tmp_path / name, name, ports[name], spires[name].url)),
                env=daemon_env(aws, tmp_path),
            )
            for name in SERVERS
        }
        base = prometheus(list(instances.values()))

        # Both scraped, both refreshed: nothing pending or firing.
        def healthy() -> bool:
            targets = api(base, "/api/v1/targets")["activeTargets"]
            ok = api(
                base,
                "/api/v1/query",
                query='spire_kms_reconciler_last_success_timestamp_seconds{task="refresh"} > 0',
            )["result"]
            return len(targets) == 2 and all(t["health"] == "up" for t in targets) and len(ok) == 2

        until("both daemons scraped and refreshed", healthy)
        time.sleep(4)  # several evaluations, longer than every shortened `for:`
        assert active_alerts(base) == set()
        for_each_panel_query_evaluates(base)

        # One daemon stops; the other one's SPIRE server stops answering alive.
        daemons["a"].signal(signal.SIGTERM)
        assert daemons["a"].finish(timeout=20) == 0, daemons["a"].tail()
        spire_b.set("dead")

        expected = {
            ("SpireKmsReconcilerTargetDown", instances["a"], "firing"),
            ("SpireKmsReconcilerSpireNotAlive", instances["b"], "firing"),
        }
        until("the two alerts firing", lambda: expected <= active_alerts(base))
        time.sleep(4)  # give any wrong alert time to show up
        assert active_alerts(base) == expected
        firing = api(base, "/api/v1/alerts")["alerts"]
        print(json.dumps(firing, indent=2))  # the API's answer, for the record
        by_name = {a["labels"]["alertname"]: a for a in firing}
        down = by_name["SpireKmsReconcilerTargetDown"]
        assert down["labels"]["job"] == "spire-kms-reconciler"
        assert down["labels"]["severity"] == "critical"
        assert instances["a"] in down["annotations"]["summary"]
        assert by_name["SpireKmsReconcilerSpireNotAlive"]["value"] in ("0e+00", "0")

        # SPIRE is back: its alert resolves, the stopped daemon's stays.
        spire_b.set("alive")
        until(
            "SpireNotAlive resolved",
            lambda: (
                active_alerts(base) == {("SpireKmsReconcilerTargetDown", instances["a"], "firing")}
            ),
        )
        daemons["b"].signal(signal.SIGTERM)
        assert daemons["b"].finish(timeout=20) == 0, daemons["b"].tail()


def for_each_panel_query_evaluates(base: str) -> None:
    """Every query of the Grafana dashboard parses and runs on a real Prometheus."""
    dashboard = json.loads((ROOT / "deploy/grafana/dashboard.json").read_text(encoding="utf-8"))
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    assert queries
    for query in queries:
        concrete = query.replace("$instance", ".*").replace("$__rate_interval", "1m")
        data = api(base, "/api/v1/query", query=concrete)
        assert data["resultType"] in ("vector", "scalar"), query
    intervals = api(
        base,
        "/api/v1/query",
        query=dashboard_query(dashboard, "Since last success, in intervals"),
    )["result"]
    tasks = {r["metric"]["task"] for r in intervals}
    assert tasks == {"refresh", "reclaim"}, intervals
    assert all(float(r["value"][1]) < 2 for r in intervals), intervals


def dashboard_query(dashboard: dict[str, Any], title: str) -> str:
    (panel,) = [p for p in dashboard["panels"] if p.get("title") == title]
    return str(panel["targets"][0]["expr"]).replace("$instance", ".*")
