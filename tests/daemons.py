"""Daemon processes for the tests: ``python -m daemon``, judged from outside as an operator would
(its /metrics and /healthz over HTTP, the JSON lines it writes, its exit code)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.emulator import Emulator
from tests.world import SERVER, TD

ROOT = Path(__file__).resolve().parents[1]
P = "spire_kms_reconciler_"
DEADLINE = 20.0  # seconds any one condition may take to appear
#: The secret access key daemons get: it must never appear in their output.
SECRET = "s3cr3t-n0t-t0-be-logged"


def daemon_env(
    emulator: Emulator, tmp: Path, *, secret: str = SECRET, **extra: str
) -> dict[str, str]:
    """os.environ + the emulator's AWS settings; the subprocess gets nothing else AWS or systemd."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SPIRE_KMS_RECONCILER_"))
        and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env.update(emulator.env())
    env["AWS_SECRET_ACCESS_KEY"] = secret
    env["AWS_CONFIG_FILE"] = str(tmp / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp / "no-aws-credentials")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an HTTP proxy


def http_get(url: str) -> tuple[int, str]:
    try:
        with OPENER.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((P + name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == P + name and all((k, x) in lab for k, x in labels.items())
    )


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    status, text = http_get(f"http://127.0.0.1:{port}/healthz")
    return status, json.loads(text)


class DaemonProcess:
    """``python -m daemon <args>`` with stdout/stderr collected line by line in the background."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._lock:
                sink.append(line.rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        """stdout's JSON events so far (lines that are not JSON objects are left out here)."""
        with self._lock:
            lines = list(self.out)
        parsed = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                parsed.append(event)
        return parsed

    def tail(self) -> str:
        with self._lock:
            return "\n".join(["--- stdout", *self.out[-30:], "--- stderr", *self.err[-30:]])

    def wait_for(
        self,
        event: str,
        *,
        since: int = 0,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        timeout: float = DEADLINE,
    ) -> dict[str, Any]:
        """The first stdout event named ``event`` at index >= ``since`` that satisfies ``where``."""

        def found() -> dict[str, Any] | None:
            return next(
                (e for e in self.events()[since:] if e.get("event") == event and where(e)), None
            )

        return dict(self.poll_until(f"a {event} event", found, timeout, every=0.05))

    def poll_until(
        self, what: str, check: Callable[[], Any], timeout: float = DEADLINE, every: float = 0.1
    ) -> Any:
        """Call ``check`` every ``every`` seconds until it returns something truthy; fail after
        ``timeout``, or at once if the daemon exits first."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = check()
            except OSError as exc:  # not listening yet
                last = exc
            else:
                if last:
                    return last
            if self.proc.poll() is not None:
                self.finish(timeout=5)
                pytest.fail(f"daemon exited before {what} (last: {last!r})\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout}s (last: {last!r})\n{self.tail()}")
            time.sleep(every)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float) -> int:
        """Wait for the exit (failing the test after ``timeout``) and for the output to drain."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon still running {timeout}s later\n{self.tail()}")
        for pump in self._pumps:
            pump.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pump in self._pumps:
            pump.join(timeout=5)


def write_config(
    tmp: Path,
    port: int,
    *,
    refresh_interval: str = "2s",
    read_timeout: str = "5s",
    extra: str = "",
    spire_url: str | None = None,
) -> Path:
    """Settings with second-scale schedules; the key identifier file holds SERVER."""
    keyid = tmp / "keyid"
    keyid.write_text(SERVER)
    path = tmp / "config.toml"
    path.write_text(
        f'trust_domain = "{TD}"\n'
        'region = "us-east-1"\n'
        f'key_identifier_file = "{keyid}"\n'
        + (f'spire_health_url = "{spire_url}"\n' if spire_url else "assume_spire_alive = true\n")
        + f"{extra}"
        f'[refresh]\ninterval = "{refresh_interval}"\nalias_scan_interval = "2s"\njitter = 0\n'
        '[reclaim]\ninterval = "3s"\nstart_delay = "1s"\njitter = 0\n'
        f'[metrics]\nlisten_address = "127.0.0.1:{port}"\n'
        f'[aws]\nconnect_timeout = "2s"\nread_timeout = "{read_timeout}"\nmax_attempts = 2\n'
        "mutating_calls_per_second = 50\n"
        '[log]\nformat = "json"\nlevel = "info"\n'
    )
    return path


class NotifySocket:
    """A unix datagram socket standing in for systemd's; drained continuously by a thread."""

    def __init__(self, directory: Path) -> None:
        path = directory / "notify"
        if len(str(path)) > 100:  # sun_path is 108 bytes
            path = Path(tempfile.mkdtemp(prefix="sdn-")) / "notify"
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def lines(self) -> list[str]:
        with self._lock:
            return [line for message in self.messages for line in message.splitlines()]

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=5)
        self._sock.close()
