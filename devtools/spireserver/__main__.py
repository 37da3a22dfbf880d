"""Build every pinned spire-server version into .cache/spire/ at once (CI starts this first, so
that the builds overlap each other and the steps before the tests)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from devtools.spireserver import VERSIONS, NoSpire, binary, build_seconds


def _build(version: str) -> str:
    try:
        path = binary(version)
    except NoSpire as exc:
        return f"{version}: not built: {exc}"
    seconds = build_seconds(version)
    took = f" (built in {seconds:.0f}s)" if seconds is not None else ""
    return f"{version}: {path}{took}"


def main() -> int:
    with ThreadPoolExecutor(max_workers=len(VERSIONS)) as pool:
        lines = list(pool.map(_build, VERSIONS))
    print("\n".join(lines))
    return 0 if all(": not built:" not in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
