"""Running the go command for the dev tools that build Go programs (SPIRE's server, the HCL
oracle, kustomize) or fetch Go modules (the Prometheus Operator's CRDs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

#: Where the Go distribution of these machines is, when it is not on PATH.
FALLBACK = Path("/usr/local/go/bin/go")


def go_binary() -> str | None:
    """The go command, or None when this machine has none."""
    return shutil.which("go") or (str(FALLBACK) if FALLBACK.exists() else None)


def go(
    *args: str,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str] | None:
    """Run ``go args...`` (output captured, never raising on a failed exit); None without go."""
    binary = go_binary()
    if binary is None:
        return None
    return subprocess.run(
        [binary, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
