"""The HCL oracle: SPIRE's HCL library, run beside the daemon's reader.

``main.go`` (a Go program of ours, built against github.com/hashicorp/hcl v1.0.1-vault-7, the
version SPIRE pins) reads a server configuration the way SPIRE's server loads it and prints what
the daemon takes from it. :func:`oracle` builds it once per source version under
``.cache/hcloracle/`` (Go must be on PATH; the module comes from the Go module proxy), and
:func:`ours` prints the same fields from :func:`daemon.spire_config.decode_spire_server_config`.
:func:`differences` compares the two; tests/test_hcl_oracle.py and ``python -m
devtools.hcloracle`` (a random corpus) fail on any difference.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.spire_config import SpireConfigError, SpireValue, decode_spire_server_config
from devtools.gotool import go, go_binary

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / ".cache" / "hcloracle"
_SOURCES = ("main.go", "go.mod", "go.sum")


class NoGo(Exception):
    """Go is not on PATH (or the oracle does not build): the differential test is skipped."""


def oracle() -> Path:
    """The oracle binary, built if its sources changed since the last build."""
    if go_binary() is None:
        raise NoGo("go is not on PATH")
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((HERE / name).read_bytes())
    binary = CACHE / digest.hexdigest()[:16] / "hcloracle"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    done = go(
        "build",
        "-o",
        str(binary.with_suffix(".tmp")),
        ".",
        cwd=HERE,
        env={"GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"},
        timeout=600,
    )
    if done is None:
        raise NoGo("go is not on PATH")
    if done.returncode != 0:
        raise NoGo(f"the oracle does not build: {done.stderr.strip()[-2000:]}")
    binary.with_suffix(".tmp").replace(binary)
    return binary


@dataclass(frozen=True)
class Case:
    """One configuration text, and how SPIRE is started with it."""

    name: str
    text: str
    expand_env: bool = False
    env: Mapping[str, str] = field(default_factory=dict)


def ask(binary: Path, cases: Sequence[Case]) -> list[dict[str, Any]]:
    """The oracle's answer for each case (one process for all of them)."""
    lines = "".join(
        json.dumps({"text": c.text, "expand_env": c.expand_env, "env": dict(c.env)}) + "\n"
        for c in cases
    )
    done = subprocess.run(
        [str(binary)],
        input=lines.encode("utf-8", "surrogateescape"),
        capture_output=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the oracle failed: {done.stderr.decode(errors='replace')}")
    answers = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(answers) == len(cases), (len(answers), len(cases))
    return answers


def _text(value: SpireValue | None) -> str:
    return "" if value is None else value.value


def ours(case: Case) -> dict[str, Any]:
    """The daemon's reading of a case, in the oracle's fields."""
    try:
        view = decode_spire_server_config(
            case.text, Path(case.name), expand_env=case.expand_env, environ=case.env
        )
    except SpireConfigError as exc:
        return {"stage": "error", "error": str(exc)}
    health = view.health
    out: dict[str, Any] = {
        "server": view.server,
        "trust_domain": _text(view.trust_domain),
        "health": {
            "listener_enabled": health.listener_enabled,
            "bind_address": _text(health.bind_address),
            "bind_port": _text(health.bind_port),
            "ready_path": _text(health.ready_path),
            "live_path": _text(health.live_path),
        },
        "plugins": [list(p) for p in view.plugins] or None,
        "key_manager": None,
    }
    manager = view.key_manager
    if manager is not None and view.data is not None:
        data = view.data
        out["key_manager"] = {
            "enabled": manager.enabled is not False,
            "plugin_data_file": None if manager.data_file is None else manager.data_file.value,
            "has_data": view.has_data,
            "region": _text(data.region),
            "key_identifier_file": _text(data.key_identifier_file),
            "key_identifier_value": _text(data.key_identifier_value),
        }
    return out


def differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """What differs between the daemon's reading and SPIRE's (empty: none)."""
    failed_mine, failed_theirs = "stage" in mine, "stage" in theirs
    if failed_mine or failed_theirs:
        if failed_mine == failed_theirs:
            return []
        if failed_mine:
            return [f"the daemon refuses it ({mine['error']}), SPIRE reads it: {dict(theirs)}"]
        return [f"SPIRE refuses it ({theirs['stage']}: {theirs['error']}), the daemon reads it"]
    found = []
    for key in ("server", "trust_domain", "health", "plugins", "key_manager"):
        if mine.get(key) != theirs.get(key):
            found.append(f"{key}: daemon {mine.get(key)!r}, SPIRE {theirs.get(key)!r}")
    return found


def compare(binary: Path, cases: Sequence[Case]) -> Iterator[tuple[Case, list[str]]]:
    """Each case whose readings differ, with the differences."""
    for case, theirs in zip(cases, ask(binary, cases), strict=True):
        found = differences(ours(case), theirs)
        if found:
            yield case, found


def corpus(directory: Path) -> Iterable[Case]:
    """The corpus files: ``*.conf``/``*.json``, with ``*.env`` beside one meaning -expandEnv
    with those variables (``NAME=value`` lines)."""
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".conf", ".json"):
            continue
        env_file = path.with_suffix(".env")
        env: dict[str, str] = {}
        if env_file.exists():
            for line in env_file.read_text().splitlines():
                if "=" in line:
                    name, _, value = line.partition("=")
                    env[name] = value
        yield Case(
            path.name,
            path.read_bytes().decode("utf-8", "surrogateescape"),
            expand_env=env_file.exists(),
            env=env,
        )
