"""The command line run in-process, as the CLI tests run it: a settings file and ``main``."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main
from tests.world import SERVER, TD


def write_config(
    tmp: Path,
    *,
    endpoint: str | None = None,
    keyid_content: str | None = SERVER,
    body: str = "",
) -> Path:
    """Write a settings file (and the key identifier file unless ``keyid_content`` is None)."""
    keyid = tmp / "keyid"
    if keyid_content is not None:
        keyid.write_text(keyid_content)
    aws = f'[aws]\nendpoint_url = "{endpoint}"\nmax_attempts = 1\nread_timeout = "5s"\n'
    path = tmp / "config.toml"
    path.write_text(
        f'trust_domain = "{TD}"\n'
        'region = "us-east-1"\n'
        f'key_identifier_file = "{keyid}"\n'
        # Liveness has its own tests (tests/test_liveness.py); these are about the CLI.
        "assume_spire_alive = true\n" + body + (aws if endpoint else "")
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)``; its exit code, stdout and stderr."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
