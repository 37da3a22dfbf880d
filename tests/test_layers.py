"""The package's layers: each module imports only from layers below its own, so there is no
import cycle and nothing low (the contract, the planner) depends on what runs it."""

from __future__ import annotations

import ast
from pathlib import Path

DAEMON = Path(__file__).resolve().parent.parent / "daemon"

#: Lowest first. A module may import from its own layer's package only when it is that package.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "files",
        "model spire durations aio progress logs clocksteps systemd http hcl",
        "plan spire_config liveness retries aws",
        "settings observe metrics",
        "execute check",
        "jobs",
        "registry listing render",
        "runtime",
        "cli",
        "__main__",
    )
)


def _level(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if module in layer)


def _top(path: Path) -> str:
    relative = path.relative_to(DAEMON)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "daemon":
                found |= {a.name for a in node.names if a.name != "__version__"}
            elif node.module.startswith("daemon."):
                found.add(node.module.split(".")[1])
    return found


def test_every_module_has_a_layer() -> None:
    modules = {_top(p) for p in DAEMON.rglob("*.py")} - {"__init__"}
    assert modules == set().union(*LAYERS)


def test_imports_only_go_down() -> None:
    problems = []
    for path in DAEMON.rglob("*.py"):
        module = _top(path)
        if module == "__init__":
            continue
        for target in _imports(path) - {module}:
            if _level(target) >= _level(module):
                problems.append(f"{path.relative_to(DAEMON)} imports {target}")
    assert not problems
