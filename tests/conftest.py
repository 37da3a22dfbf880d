"""Shared fixtures: one moto-backed KMS emulator per test session, reset for each test using it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.emulator import Emulator
from devtools.faultproxy import FaultProxy
from devtools.spire_health import SpireHealth
from tests.cli_runs import write_config
from tests.daemons import DaemonProcess


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The session's emulator, started once. State is shared: use ``aws`` for a clean slate."""
    with Emulator() as emu:
        yield emu


@pytest.fixture
def aws(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    """A freshly reset emulator, with the process environment pointing AWS clients at it.

    Every ``AWS_*`` variable of the outer environment is removed first (a profile, a session token
    or an ``AWS_ENDPOINT_URL_KMS`` would otherwise win), and the shared config/credentials files
    point at nothing, so the standard AWS configuration resolves to the emulator alone.
    """
    emulator.reset()
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in emulator.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    yield emulator


@pytest.fixture(scope="module")
def proxy_server(emulator: Emulator) -> Iterator[FaultProxy]:
    """A fault proxy in front of the emulator, one per test module."""
    with FaultProxy(emulator.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def proxy(proxy_server: FaultProxy, aws: Emulator) -> FaultProxy:
    """The proxy with no rules and no records, in front of a freshly reset emulator."""
    proxy_server.reset()
    return proxy_server


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``daemon.cli.main`` points the root logger at the test's stderr; undo that afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def spire_health_server() -> Iterator[SpireHealth]:
    """A stand-in SPIRE health listener for the whole session (see devtools/spire_health.py)."""
    with SpireHealth() as server:
        yield server


@pytest.fixture
def spire_health(spire_health_server: SpireHealth) -> SpireHealth:
    """The stand-in SPIRE health listener, answering alive (tests switch it with ``set``)."""
    spire_health_server.set("alive")
    spire_health_server.requests = 0
    return spire_health_server


@pytest.fixture
def spawn() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemon processes; any still running at teardown is killed (by its own pid)."""
    started: list[DaemonProcess] = []

    def start(*args: str, env: dict[str, str]) -> DaemonProcess:
        process = DaemonProcess(list(args), env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def config(tmp_path: Path, proxy: FaultProxy) -> Path:
    """A CLI settings file for this server, its AWS endpoint the fault proxy."""
    return write_config(tmp_path, endpoint=proxy.endpoint_url)
