"""A Debian root booted under ``systemd-nspawn``, to run the unit under a real systemd.

The root (Debian bookworm minbase with systemd, python3 and python3-venv) is bootstrapped once
with ``debootstrap`` into ``.cache/nspawn/`` and holds the virtual environment of
docs/install.md (``/opt/spire-kms-reconciler/venv``) with the declared dependencies; the cache
key is the package list and pyproject.toml's dependencies. Each boot reinstalls the daemon itself
from a wheel of the working tree, so the code under test is always the checkout's.

The container shares the host's network (no ``--private-network``): the daemon inside reaches
the emulator and the SPIRE health stand-in on the host's loopback, and the host scrapes its
``/metrics``. Commands run inside through ``nsenter`` into the container's PID 1, so neither
machined nor a host D-Bus is needed::

    with Container.boot(wheel_dir) as box:
        box.sh("systemctl start spire-kms-reconciler")
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

from devtools.service import Service

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "nspawn"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates")
VENV = "/opt/spire-kms-reconciler/venv"


class NoNspawn(Exception):
    """The machine cannot bootstrap or boot a container (tools, privileges, kernel)."""


def _dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return list(project["dependencies"])


def _key() -> str:
    text = "\n".join([SUITE, *PACKAGES, *_dependencies()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _run(args: Sequence[str], timeout: float, what: str, error: type[Exception] = NoNspawn) -> str:
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise error(f"{what} exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    return done.stdout


def _nspawn_run(
    root: Path,
    command: str,
    timeout: float,
    what: str,
    binds: Sequence[tuple[Path, str]] = (),
) -> str:
    """Run one shell command in the root without booting it (like chroot, with namespaces)."""
    return _run(
        [*_nspawn(root, binds), "/bin/sh", "-ec", command],
        timeout,
        what,
    )


def _nspawn(tree: Path, binds: Sequence[tuple[Path, str]]) -> list[str]:
    """systemd-nspawn without machined or a host D-Bus (--register=no, --keep-unit), on the
    host's network, with ``binds`` (host path, container path) read-only."""
    return [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--resolv-conf=copy-host",
        f"--directory={tree}",
        *(f"--bind-ro={host}:{inside}" for host, inside in binds),
    ]


def _bootstrap(tree: Path) -> None:
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(tree),
            MIRROR,
        ],
        1200,
        "debootstrap",
    )


def root() -> Path:
    """The cached root, bootstrapped (about a minute and a half) when absent."""
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            raise NoNspawn(f"{tool} is not installed")
    if os.geteuid() != 0:
        raise NoNspawn("bootstrapping and booting a container needs root")
    target = CACHE / f"{SUITE}-{_key()}"
    if (target / ".complete").exists():
        return target / "root"
    tree = target / "root"
    started = time.monotonic()
    if not (target / ".bootstrapped").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        _bootstrap(tree)
        (target / ".bootstrapped").touch()
    # The container cannot be assumed to reach a package index the way the host does (a proxy,
    # its CA): the dependencies are built into wheels on the host and installed from them, as
    # docs/install.md describes for hosts without an index.
    wheels = target / "wheels"
    _run(_pip_wheel(wheels, *_dependencies()), 900, "building the dependencies' wheels")
    _nspawn_run(
        tree,
        f"python3 -m venv {VENV} && {VENV}/bin/pip install --quiet --no-index"
        f" --find-links /wheels {' '.join(repr(r) for r in _dependencies())}",
        900,
        "installing the dependencies into the root",
        binds=[(wheels, "/wheels")],
    )
    (target / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    (target / ".complete").touch()
    return tree


def _pip_wheel(out: Path, *what: str) -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out), *what]


def build_wheel(out: Path) -> Path:
    """A wheel of the working tree (no dependencies), for the container to install."""
    out.mkdir(parents=True, exist_ok=True)
    _run(
        _pip_wheel(out, "--no-deps", str(ROOT)),
        300,
        "building the wheel",
        RuntimeError,  # a project that does not build is a failure, not a machine's limit
    )
    wheels = sorted(out.glob("spire_kms_reconciler-*.whl"))
    if not wheels:
        raise RuntimeError(f"no wheel in {out}")
    return wheels[-1]


class Container(Service):
    """A booted container; see the module docstring."""

    def __init__(self, tree: Path, process: subprocess.Popen[bytes], console: Path) -> None:
        self.tree = tree
        self.process = process
        self.console = console
        self.leader = 0

    @classmethod
    def boot(cls, binds: Sequence[tuple[Path, str]] = (), timeout: float = 90) -> Container:
        """Boot the cached root; ``binds`` are (host path, container path), read-only."""
        tree = root()
        console = tree.parent / "console.log"
        args = [*_nspawn(tree, binds), "--boot", "--console=passive", "--machine=skr-systemd-test"]
        with console.open("wb") as sink:
            process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
        box = cls(tree, process, console)
        try:
            box._wait_booted(timeout)
        except BaseException:
            box.shutdown()
            raise
        return box

    def _wait_booted(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NoNspawn(
                    f"systemd-nspawn exited {self.process.returncode}: "
                    + self.console.read_text(errors="replace")[-1500:]
                )
            if not self.leader:
                self.leader = _child_of(self.process.pid)
            if self.leader:
                state = self.run("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.3)
        raise NoNspawn(f"the container did not boot in {timeout:.0f} s")

    def run(
        self, command: str, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the container (all its namespaces, as root)."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{command!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def sh(self, command: str, timeout: float = 120) -> str:
        """Run a command inside; return its stdout; fail on a non-zero exit."""
        return self.run(command, timeout=timeout).stdout

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the container (as root)."""
        target = self.tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(mode)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` of the given properties, as a dict."""
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in properties))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def shutdown(self) -> None:
        """Power the container off (SIGTERM to nspawn asks its systemd to halt)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def start(self) -> None:
        """Nothing: :meth:`boot` returns a container already booted."""

    def stop(self) -> None:
        self.shutdown()


def _child_of(pid: int) -> int:
    """The container's PID 1 as the host sees it: systemd-nspawn's child process."""
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
    except OSError:
        return 0
    return 0
