"""Command line: argument parsing, settings loading and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

import structlog

from daemon import __version__, logs, spire
from daemon.aws.client import AwsApi, AwsOptions, open_aws
from daemon.aws.clock import run_clock
from daemon.aws.errors import AccessDenied, AwsError
from daemon.jobs import (
    Context,
    reclaim_once,
    reclaim_policy,
    refresh_once,
    refresh_policy,
    summary_fields,
)
from daemon.liveness import probe_for
from daemon.model import Finding, Job, KeyVerdict, Outcome, RunReport, Verdict
from daemon.observe import observe_reclaim, observe_refresh, scan_own_aliases
from daemon.plan import check_clock, plan_reclaim, plan_refresh
from daemon.runtime import StartupError, serve
from daemon.settings import (
    DEFAULT_CONFIG_PATH,
    Settings,
    SettingsError,
    liveness_problem,
    load_settings,
    settings_warnings,
)

log = structlog.get_logger("daemon.cli")


class Exit(IntEnum):
    """The process's exit codes."""

    OK = 0
    FAILURES = 1
    BAD_CONFIG = 2
    PERMISSION = 3
    REFUSED = 4


class ConfigProblem(Exception):
    """Settings or identity that cannot be used."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser; ``--config`` works before and after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"settings file (TOML), default {DEFAULT_CONFIG_PATH}",
    )
    parser = argparse.ArgumentParser(
        prog="spire-kms-reconciler",
        description="Keeps SPIRE's AWS KMS keys alive and reclaims the dead ones.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    once = sub.add_parser("once", parents=[common], help="run the jobs once, then exit")
    once.add_argument("--job", choices=["refresh", "reclaim", "all"], default="all")
    once.add_argument("--dry-run", action="store_true", help="decide and print; change nothing")
    keys = sub.add_parser("keys", parents=[common], help="list the trust domain's SPIRE keys")
    keys.add_argument("--output", choices=["table", "json"], default="table")
    sub.add_parser("check", parents=[common], help="validate settings and probe AWS permissions")
    sub.add_parser("run", parents=[common], help="run the daemon: scheduled jobs, metrics, health")
    return parser


def load(args: argparse.Namespace) -> Settings:
    """Load settings from ``--config`` (required to exist when given) and the environment."""
    path: Path | None = getattr(args, "config", None)
    if path is not None:
        return load_settings(path, required_file=True)
    return load_settings(DEFAULT_CONFIG_PATH)


def resolve_server_id(settings: Settings) -> str:
    """Return this server's ID from the key identifier value or SPIRE's key identifier file."""
    if settings.key_identifier_value is not None:
        return settings.key_identifier_value
    assert settings.key_identifier_file is not None
    try:
        parsed = spire.read_server_id_file(settings.key_identifier_file)
    except spire.ContractError as exc:
        raise ConfigProblem(str(exc)) from None
    return parsed.server_id


def aws_options(settings: Settings) -> AwsOptions:
    """Return the AWS client options from settings."""
    aws = settings.aws
    return AwsOptions(
        region=settings.region,
        endpoint_url=aws.endpoint_url,
        connect_timeout=aws.connect_timeout.total_seconds(),
        read_timeout=aws.read_timeout.total_seconds(),
        max_attempts=aws.max_attempts,
        max_concurrency=aws.max_concurrency,
        mutating_calls_per_second=aws.mutating_calls_per_second,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = load(args)
    except SettingsError as exc:
        print(f"spire-kms-reconciler: invalid settings:\n{exc}", file=sys.stderr)
        return Exit.BAD_CONFIG
    # The daemon logs to stdout for journald; one-shot commands keep stdout for their result.
    stream = sys.stdout if args.command == "run" else sys.stderr
    logs.configure(settings.log.format, settings.log.level, stream=stream)
    try:
        server_id = resolve_server_id(settings)
    except ConfigProblem as exc:
        print(f"spire-kms-reconciler: {exc}", file=sys.stderr)
        return Exit.BAD_CONFIG
    if _needs_liveness(args) and (problem := liveness_problem(settings)) is not None:
        print(f"spire-kms-reconciler: {problem}", file=sys.stderr)
        return Exit.BAD_CONFIG
    command = {"once": _once, "keys": _keys, "check": _check, "run": _run}[args.command]
    try:
        return asyncio.run(command(args, settings, server_id, sys.stdout))
    except ConfigProblem as exc:
        print(f"spire-kms-reconciler: {exc}", file=sys.stderr)
        return Exit.BAD_CONFIG


def _needs_liveness(args: argparse.Namespace) -> bool:
    """Whether the command may stamp keys: ``run``, and ``once`` with the refresh job."""
    return args.command == "run" or (args.command == "once" and args.job in ("refresh", "all"))


@asynccontextmanager
async def aws_session(settings: Settings) -> AsyncIterator[AwsApi]:
    """Open the AWS clients; a missing region is a configuration problem (exit code 2)."""
    try:
        async with open_aws(aws_options(settings)) as api:
            yield api
    except Exception as exc:
        if type(exc).__name__ == "NoRegionError":
            raise ConfigProblem(
                "no AWS region: set region in the settings, or AWS_REGION or AWS_DEFAULT_REGION"
            ) from None
        raise


async def _once(args: argparse.Namespace, settings: Settings, server_id: str, out: TextIO) -> int:
    jobs = [Job.REFRESH, Job.RECLAIM] if args.job == "all" else [Job(args.job)]
    reports: list[RunReport] = []
    async with aws_session(settings) as api:
        ctx = Context(settings, server_id, api, dry_run=args.dry_run)
        for job in jobs:
            if job is Job.RECLAIM and not settings.reclaim.enabled:
                print("reclaim: disabled in settings ([reclaim] enabled = false)", file=out)
                continue
            report = await (refresh_once(ctx) if job is Job.REFRESH else reclaim_once(ctx))
            reports.append(report)
            print_report(report, out)
    return exit_code(reports)


async def _run(args: argparse.Namespace, settings: Settings, server_id: str, out: TextIO) -> int:
    del out

    def reload() -> tuple[Settings, str]:
        fresh = load(args)
        if (problem := liveness_problem(fresh)) is not None:
            raise ConfigProblem(problem)
        return fresh, resolve_server_id(fresh)

    try:
        async with aws_session(settings) as api:
            return await serve(settings, server_id, api, reload=reload)
    except StartupError as exc:
        raise ConfigProblem(str(exc)) from None


def exit_code(reports: Sequence[RunReport]) -> int:
    """Map run outcomes to the process's exit code (the worst wins)."""
    if any(r.permission_denied for r in reports):
        return Exit.PERMISSION
    if any(r.outcome is Outcome.REFUSED for r in reports):
        return Exit.REFUSED
    if any(r.outcome is Outcome.FAILURE for r in reports):
        return Exit.FAILURES
    return Exit.OK


def print_report(report: RunReport, out: TextIO) -> None:
    """Print a run's summary for a person: counts, then one line per action and finding."""
    fields = summary_fields(report)
    mode = " (dry run: nothing changed)" if report.dry_run else ""
    print(
        f"{report.job.value}: {fields['outcome']}{mode} in {fields['duration_seconds']}s, "
        f"{fields['aws_calls_total']} AWS calls "
        + " ".join(f"{op}={n}" for op, n in fields["aws_calls"].items()),
        file=out,
    )
    if report.error:
        print(f"  error: {report.error}", file=out)
    if report.plan.refusal is not None:
        print(
            f"  REFUSED by the {report.plan.refusal.value} guard: {report.plan.refusal_detail}",
            file=out,
        )
    elif report.spire is not None:
        print(f"  SPIRE server alive: {report.spire.detail}", file=out)
    if report.plan.failure is not None:
        print(f"  FAILED: {report.plan.failure}", file=out)
    if fields["verdicts"]:
        print("  keys: " + ", ".join(f"{k} {v}" for k, v in fields["verdicts"].items()), file=out)
    if fields["actions"]:
        print("  actions: " + ", ".join(f"{k} {v}" for k, v in fields["actions"].items()), file=out)
    for result in report.results:
        a = result.action
        target = a.alias_name or a.arn
        line = f"    {result.outcome.value:<8} {a.kind.value:<18} {target}  ({a.reason})"
        if result.error:
            line += f" error: {result.error}"
        print(line, file=out)
    for finding in report.plan.findings:
        print(
            f"    finding  {finding.anomaly.value:<18} {finding.arn}  ({finding.detail})", file=out
        )
    for err in report.read_errors:
        print(f"    read error: {err}", file=out)


async def _keys(args: argparse.Namespace, settings: Settings, server_id: str, out: TextIO) -> int:
    policy = reclaim_policy(settings)
    try:
        async with aws_session(settings) as api:
            with run_clock():
                observed = await observe_reclaim(
                    api, settings.trust_domain, server_id, policy, describe_all=True
                )
                snapshot = observed.snapshot
                skewed = check_clock(
                    snapshot.aws_time, snapshot.local_time, policy.clock_skew_tolerance
                )
                if skewed is not None and snapshot.aws_time is not None:
                    # Staleness is judged on AWS's clock, never on one AWS contradicts.
                    print(
                        f"spire-kms-reconciler: warning: {skewed}; verdicts use AWS's clock",
                        file=sys.stderr,
                    )
                # Every alias of this server, whatever migrate_legacy_aliases says: an alias
                # that resolves to a key that is not Enabled stops SPIRE from starting.
                legacy = await scan_own_aliases(api, settings.trust_domain, server_id)
                own = await observe_refresh(api, settings.trust_domain, server_id, legacy)
    except AccessDenied as exc:
        print(f"spire-kms-reconciler: {exc.explain()}", file=sys.stderr)
        return Exit.PERMISSION
    except AwsError as exc:
        print(f"spire-kms-reconciler: {exc}", file=sys.stderr)
        return Exit.FAILURES
    now = snapshot.aws_time or snapshot.local_time or datetime.now(UTC)
    reclaim_plan = plan_reclaim(snapshot, policy)
    refresh_plan = plan_refresh(own.snapshot, now, refresh_policy(settings))
    verdicts = merge_verdicts(reclaim_plan.verdicts, refresh_plan.verdicts)
    findings = _unique_findings(refresh_plan.findings + reclaim_plan.findings)
    errors = observed.errors + own.errors
    rows = [
        {
            "key_arn": v.arn,
            "server_id": v.server_id,
            "spire_key_id": v.spire_key_id,
            "key_state": v.state,
            "last_update": v.last_update,
            "last_update_time": _iso(v.last_update),
            "this_server": v.server_id == server_id,
            "verdict": v.verdict.value,
            "reason": v.reason,
            "findings": [
                {"anomaly": f.anomaly.value, "detail": f.detail} for f in findings if f.arn == v.arn
            ],
        }
        for v in sorted(verdicts, key=lambda v: (v.server_id or "", v.spire_key_id or "", v.arn))
    ]
    if args.output == "json":
        json.dump(rows, out, indent=2)
        out.write("\n")
    else:
        print_keys_table(rows, out)
        for finding in findings:
            print(f"finding  {finding.anomaly.value}  {finding.arn}  ({finding.detail})", file=out)
    for err in errors:
        print(f"spire-kms-reconciler: read error: {err}", file=sys.stderr)
    return Exit.FAILURES if errors else Exit.OK


def _unique_findings(findings: Sequence[Finding]) -> list[Finding]:
    """Each finding once (both planners may see the same key), in the order first seen."""
    return list(dict.fromkeys(findings))


def merge_verdicts(
    trust_domain: Sequence[KeyVerdict], own: Sequence[KeyVerdict]
) -> list[KeyVerdict]:
    """Show this server's keys as the refresh job sees them (serving, superseded, legacy).

    The reclaim verdict stays where it says more than "fresh"; untagged legacy keys, which the
    trust-domain listing cannot find by tag, are added.
    """
    mine = {v.arn: v for v in own}
    merged = [
        mine[v.arn] if v.arn in mine and v.verdict is Verdict.FRESH else v for v in trust_domain
    ]
    listed = {v.arn for v in trust_domain}
    merged += [v for v in own if v.arn not in listed]
    return merged


def _iso(raw: str | None) -> str | None:
    parsed = spire.parse_last_update(raw)
    if parsed is None:
        return None
    try:
        return datetime.fromtimestamp(parsed, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return None


def print_keys_table(rows: Sequence[dict[str, Any]], out: TextIO) -> None:
    """Print the key listing as an aligned table."""
    headers = ["KEY ARN", "SERVER ID", "SPIRE KEY ID", "STATE", "LAST UPDATE", "VERDICT"]
    table = [
        [
            r["key_arn"],
            (r["server_id"] or "-") + (" (this)" if r["this_server"] else ""),
            r["spire_key_id"] or "-",
            r["key_state"] or "-",
            r["last_update_time"] or (r["last_update"] or "-"),
            r["verdict"],
        ]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *table, strict=False)]
    for row in [headers, *table]:
        print(
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out
        )
    print(f"{len(rows)} keys", file=out)


async def _check(args: argparse.Namespace, settings: Settings, server_id: str, out: TextIO) -> int:
    print(f"settings: ok (trust domain {settings.trust_domain}, server ID {server_id})", file=out)
    for warning in settings_warnings(settings):
        print(f"settings: warning: {warning}", file=out)
    print(f"spire server: {await _spire_status(settings)}", file=out)
    results: list[tuple[str, str, str]] = []
    denied = failed = False
    async with aws_session(settings) as api:
        for permission, needed_by, probe in _probes(api, settings, server_id):
            try:
                detail = await probe()
                results.append((permission, needed_by, f"ok{detail}"))
            except AccessDenied as exc:
                denied = True
                results.append((permission, needed_by, f"DENIED: {exc.explain()}"))
            except AwsError as exc:
                failed = True
                results.append((permission, needed_by, f"error: {exc}"))
    for permission in (
        "kms:TagResource",
        "tag:TagResources",
        "kms:UpdateAlias",
        "kms:ScheduleKeyDeletion",
    ):
        results.append(
            (permission, "refresh/reclaim", "not probed: no side-effect-free call exists")
        )
    width = max(len(r[0]) for r in results)
    for permission, needed_by, result in results:
        print(f"  {permission:<{width}}  {needed_by:<16} {result}", file=out)
    if denied:
        return Exit.PERMISSION
    return Exit.FAILURES if failed else Exit.OK


async def _spire_status(settings: Settings) -> str:
    """One line on whether the local SPIRE server answers alive, for ``check``."""
    if (problem := liveness_problem(settings)) is not None:
        return f"not configured: {problem}"
    liveness = await probe_for(
        settings.spire_health_url,
        settings.assume_spire_alive,
        settings.spire_health_timeout.total_seconds(),
    )()
    if liveness.url is None:
        return f"{liveness.detail} (unsafe: stamps do not prove SPIRE is alive)"
    if liveness.alive:
        return f"alive ({liveness.detail})"
    return f"NOT ALIVE ({liveness.detail}): refresh runs write nothing until it answers 2xx"


def _probes(api: AwsApi, settings: Settings, server_id: str) -> list[tuple[str, str, Any]]:
    found: list[str] = []

    async def get_resources() -> str:
        resources = await api.get_resources({spire.TAG_TRUST_DOMAIN: [settings.trust_domain]})
        found.extend(r.arn for r in resources)
        return f" ({len(resources)} keys tagged {settings.trust_domain})"

    async def describe_key() -> str:
        if not found:
            return " (not probed: no key of the trust domain to describe)"
        await api.describe_key(found[0])
        return ""

    async def list_aliases() -> str:
        await api.probe_list_aliases()
        return ""

    probes: list[tuple[str, str, Any]] = [
        ("tag:GetResources", "refresh/reclaim", get_resources),
        ("kms:DescribeKey", "refresh/reclaim", describe_key),
    ]
    if settings.refresh.migrate_legacy_aliases or settings.reclaim.enabled:
        probes.append(("kms:ListAliases", "refresh/reclaim", list_aliases))
    return probes
