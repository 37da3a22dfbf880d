"""Install the oldest versions pyproject.toml allows and run the unit tests against them.

    python -m devtools.minimums [pytest arguments]

Every runtime dependency is pinned to its floor (``>=X`` becomes ``==X``; an exact pin stays),
in a venv of its own under ``.cache/minimums/`` keyed by those pins, so that a floor that no
longer imports or behaves is caught before a user's resolver picks it. The test extras are
installed at their newest, with the floors as constraints. The unit tests (everything not
marked ``integration``) then run in that venv.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "minimums"

_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.\-\[\]]+)\s*(?P<spec>.*)$")


def floor(requirement: str) -> str:
    """``name>=X,<Y`` -> ``name==X``; ``name==X`` unchanged. A requirement with no floor is
    refused: every dependency must say the oldest version it works with."""
    match = _REQUIREMENT.match(requirement.strip())
    if match is None:
        raise ValueError(f"cannot read requirement {requirement!r}")
    name = match["name"]
    for raw in match["spec"].split(","):
        clause = raw.strip()
        if clause.startswith(("==", ">=")):
            return f"{name}=={clause[2:].strip()}"
    raise ValueError(f"{requirement!r} declares no minimum version")


def floors(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [floor(r) for r in project["dependencies"]]


def _pin(line: str) -> tuple[str, Version]:
    name, _, version = line.partition("==")
    return canonicalize_name(name), Version(version)


def main(argv: list[str] | None = None) -> int:
    pins = floors()
    print("minimum versions:", " ".join(pins), flush=True)
    key = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    env = CACHE / key
    python = env / "bin" / "python"
    stamp = env / ".installed"
    if not stamp.exists():
        venv.create(env, with_pip=True, clear=True)
        constraints = env / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-c", str(constraints), "-e", f"{ROOT}[test]"], check=True)
        stamp.touch()
    installed = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wanted = dict(_pin(p) for p in pins)
    for line in installed:
        name, version = _pin(line)
        if name in wanted and version != wanted[name]:
            print(f"{line} installed instead of {name}=={wanted[name]}", file=sys.stderr)
            return 1
    args = argv if argv is not None else sys.argv[1:]
    pytest = [str(python), "-m", "pytest", "-q", "-m", "not integration", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*pytest, *args],
        cwd=ROOT,
        check=False,
    )
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
