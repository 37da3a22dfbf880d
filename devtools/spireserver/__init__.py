"""A real SPIRE server beside the daemon: the spire-server binary, built from SPIRE's Go module at
a pinned version, run against the emulator.

:func:`binary` builds ``spire-server`` from a recipe (``go.mod``/``go.sum``, a Go tool module
pinning ``github.com/spiffe/spire``: this folder's for :data:`VERSION`, ``v1.13.3/`` for
:data:`LEGACY`; nothing of SPIRE's source is kept here) into ``.cache/spire/<version>/``, once
per version; Go must be on PATH and reach the Go module proxy.
:class:`SpireServer` writes a ``server.conf`` (sqlite datastore, a short ``ca_ttl`` so that keys
rotate within a test, the health listener on, the ``aws_kms`` KeyManager in alias or tag mode),
starts the server with its AWS clients pointed at a fault proxy in front of the emulator, and
reads SPIRE's own view back: ``healthcheck``, ``bundle show`` and its log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.emulator import REGION, free_port
from devtools.gotool import go

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / ".cache" / "spire"
#: The SPIRE release the main recipe pins (go.mod here); tag-based key discovery exists from
#: v1.15.2.
VERSION = "v1.15.3"
#: An alias-mode-only release, as most fleets still run (its recipe is in v1.13.3/).
LEGACY = "v1.13.3"
VERSIONS = (VERSION, LEGACY)


class NoSpire(Exception):
    """spire-server cannot be built or run here (no Go, or the build failed)."""


def recipe(version: str = VERSION) -> Path:
    """The folder whose go.mod/go.sum pin ``version``."""
    folder = HERE if version == VERSION else HERE / version
    if _pinned_version(folder) != version:
        raise NoSpire(f"{folder / 'go.mod'} does not pin github.com/spiffe/spire {version}")
    return folder


def _pinned_version(folder: Path = HERE) -> str:
    for line in (folder / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "github.com/spiffe/spire":
            return parts[1]
    raise NoSpire(f"{folder / 'go.mod'} does not pin github.com/spiffe/spire")


def binary(version: str = VERSION) -> Path:
    """The spire-server binary of ``version``, built from its recipe if absent (a cold build
    takes several minutes; the time is kept in ``build-seconds`` beside it)."""
    folder = recipe(version)
    target = CACHE / version / "spire-server"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    started = time.monotonic()
    done = go(
        "build",
        "-o",
        str(partial),
        "github.com/spiffe/spire/cmd/spire-server",
        cwd=folder,
        env={"GOFLAGS": "-mod=readonly"},
        timeout=1800,
    )
    if done is None:
        raise NoSpire("go is not on PATH")
    if done.returncode != 0:
        raise NoSpire(f"spire-server {version} does not build: {done.stderr.strip()[-2000:]}")
    partial.replace(target)
    (target.parent / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    return target


def build_seconds(version: str = VERSION) -> float | None:
    """How long the cached binary took to build, if it was built here."""
    path = CACHE / version / "build-seconds"
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class SpireServer:
    """One spire-server process and its files under ``workdir``."""

    workdir: Path
    endpoint_url: str  # where its AWS clients go (the fault proxy)
    trust_domain: str = "example.org"
    tag_mode: bool = False
    ca_ttl: str = "1m"
    version: str = VERSION  # which spire-server: VERSION or LEGACY (alias mode only)
    key_type: str = "ec-p256"  # ca_key_type and jwt_key_type: ec-p256, ec-p384, rsa-2048, rsa-4096
    server_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        if self.tag_mode and self.version == LEGACY:
            raise ValueError(f"SPIRE {LEGACY} has no tag-based key discovery")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.health_port = free_port()
        self.key_identifier_file = self.workdir / "server_id"
        self.key_identifier_file.write_text(self.server_id)  # no newline: SPIRE parses it whole
        self.key_identifier_file.chmod(0o600)
        self.config = self.workdir / "server.conf"
        self.log = self.workdir / "spire.log"
        self.write_config()

    @property
    def socket(self) -> Path:
        return self.workdir / "api.sock"

    @property
    def live_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/live"

    @property
    def mode(self) -> str:
        return "tag" if self.tag_mode else "alias"

    def write_config(self) -> None:
        data = self.workdir / "data"
        tag = "\n      enable_tag_based_key_discovery = true" if self.tag_mode else ""
        self.config.write_text(
            f"""server {{
  bind_address = "127.0.0.1"
  bind_port = "{self.port}"
  socket_path = "{self.socket}"
  trust_domain = "{self.trust_domain}"
  data_dir = "{data}"
  log_level = "DEBUG"
  ca_ttl = "{self.ca_ttl}"
  ca_key_type = "{self.key_type}"
  jwt_key_type = "{self.key_type}"
  default_x509_svid_ttl = "10s"
  default_jwt_svid_ttl = "10s"
}}

plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{data}/datastore.sqlite3"
    }}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "aws_kms" {{
    plugin_data {{
      region = "{REGION}"
      key_identifier_file = "{self.key_identifier_file}"{tag}
    }}
  }}
}}

health_checks {{
  listener_enabled = true
  bind_address = "127.0.0.1"
  bind_port = "{self.health_port}"
  live_path = "/live"
  ready_path = "/ready"
}}
""",
            encoding="utf-8",
        )

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            {
                "AWS_ENDPOINT_URL": self.endpoint_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(self.workdir / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "no-aws-credentials"),
            }
        )
        env.update(self.env)
        return env

    def start(self, *, wait: float = 60.0) -> None:
        """Start the server; with ``wait``, until it is healthy (or fail with its log)."""
        if self.running:
            raise RuntimeError("already running")
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [str(binary(self.version)), "run", "-config", str(self.config)],
                env=self._environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_healthy(wait)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"spire-server exited at start:\n{self.last_log(4000)}")
            if self.live():
                return
            time.sleep(0.2)
        raise RuntimeError(f"spire-server not healthy after {timeout} s:\n{self.last_log(4000)}")

    def live(self) -> bool:
        """Whether the health listener's live check answers 200."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.live_url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait; the exit status (None if it was not running)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        self.process = None
        return code

    def run_until_exit(self, timeout: float = 60.0) -> int:
        """Start the server expecting it to fail at start: its exit status."""
        self.start(wait=0)
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"spire-server did not exit:\n{self.last_log(2000)}") from None

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``spire-server <args> -socketPath <its socket>``."""
        return subprocess.run(
            [str(binary(self.version)), *args, "-socketPath", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def healthcheck(self) -> bool:
        return self.command("healthcheck").returncode == 0

    def bundle(self) -> dict[str, Any]:
        """``bundle show -format spiffe``: the trust bundle SPIRE serves (a JWKS)."""
        done = self.command("bundle", "show", "-format", "spiffe")
        if done.returncode != 0:
            raise RuntimeError(f"bundle show failed: {done.stderr}")
        parsed: dict[str, Any] = json.loads(done.stdout)
        return parsed

    def last_log(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def log_lines(self, message: str) -> list[str]:
        """Log lines holding ``message``."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if message in line]
