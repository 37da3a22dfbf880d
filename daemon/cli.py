"""Command line: argument parsing, settings loading, the one-shot commands and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from enum import IntEnum
from pathlib import Path
from typing import TextIO

from daemon import __version__, logs, spire
from daemon.aws.client import AwsApi, AwsOptions
from daemon.aws.errors import AccessDenied, AwsError
from daemon.aws.session import open_aws
from daemon.check import offline_report, permissions, probe_all, spire_status
from daemon.jobs import Context
from daemon.listing import list_keys
from daemon.model import Job, Outcome, RunReport, Verdict
from daemon.registry import JOBS
from daemon.render import (
    ProgressLine,
    key_rows,
    print_check,
    print_keys_table,
    print_report,
    report_dict,
    write_json,
)
from daemon.runtime import StartupError, serve
from daemon.settings import (
    DEFAULT_CONFIG_PATH,
    Settings,
    SettingsError,
    liveness_problem,
    load_settings,
)

LOG_LEVELS = ("debug", "info", "warning", "error")


class Exit(IntEnum):
    """The process's exit codes."""

    OK = 0
    FAILURES = 1
    BAD_CONFIG = 2
    PERMISSION = 3
    REFUSED = 4
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    BROKEN_PIPE = 141  # the output's reader went away (128 + SIGPIPE)


class ConfigProblem(Exception):
    """Settings or identity that cannot be used."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser; common options work before and after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"settings file (TOML), default {DEFAULT_CONFIG_PATH}",
    )
    common.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="log level, over [log] level and SPIRE_KMS_RECONCILER_LOG__LEVEL",
    )
    parser = argparse.ArgumentParser(
        prog="spire-kms-reconciler",
        description="Keeps SPIRE's AWS KMS keys alive and reclaims the dead ones.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    once = sub.add_parser("once", parents=[common], help="run the jobs once, then exit")
    once.add_argument("--job", choices=[*(j.name for j in JOBS), "all"], default="all")
    once.add_argument("--dry-run", action="store_true", help="decide and print; change nothing")
    once.add_argument("--output", choices=["text", "json"], default="text")
    keys = sub.add_parser("keys", parents=[common], help="list the trust domain's SPIRE keys")
    keys.add_argument("--output", choices=["table", "json"], default="table")
    keys.add_argument(
        "--verdict",
        action="append",
        type=Verdict,
        choices=list(Verdict),
        help="only keys with this verdict (repeatable)",
    )
    keys.add_argument("--server", metavar="ID", help="only keys of this SPIRE server ID")
    check = sub.add_parser(
        "check", parents=[common], help="validate settings and probe AWS permissions"
    )
    check.add_argument(
        "--offline",
        action="store_true",
        help="validate the settings (and SPIRE's server.conf) only: ask neither SPIRE nor AWS",
    )
    check.add_argument("--output", choices=["text", "json"], default="text")
    sub.add_parser("run", parents=[common], help="run the daemon: scheduled jobs, metrics, health")
    return parser


def load(args: argparse.Namespace) -> Settings:
    """Load settings from ``--config`` (required to exist when given) and the environment;
    ``--log-level`` goes over both (and stays over them at a reload)."""
    path: Path | None = getattr(args, "config", None)
    env: dict[str, str] | None = None
    if (level := getattr(args, "log_level", None)) is not None:
        env = {**os.environ, "SPIRE_KMS_RECONCILER_LOG__LEVEL": level}
    if path is not None:
        return load_settings(path, required_file=True, env=env)
    return load_settings(DEFAULT_CONFIG_PATH, env=env)


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
    """Run the command line and return the exit code. No traceback reaches the user: Ctrl-C
    exits 130, a reader that goes away (``| head``) ends the output quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader is gone: send the rest of the output nowhere, and exit as a process that
        # SIGPIPE ended would (without the interpreter's complaint at exit).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return Exit.BROKEN_PIPE
    except KeyboardInterrupt:
        print("spire-kms-reconciler: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    return code


def _main(argv: Sequence[str] | None) -> int:
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
    """Whether the command may stamp keys: ``run``, ``once`` with the refresh job, and
    ``check --offline`` (which says whether ``run`` would start)."""
    if args.command == "check":
        return bool(args.offline)
    return args.command == "run" or (
        args.command == "once" and args.job in ("all", Job.REFRESH.value)
    )


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


class _Interrupt:
    """Ctrl-C during ``once``: the first stops new writes (calls in flight finish, the rest of
    the run's actions are reported skipped, the report is printed); the second quits at once."""

    def __init__(self, api: AwsApi) -> None:
        self.api = api
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count > 1:
            print("spire-kms-reconciler: interrupted again: quitting", file=sys.stderr)
            os._exit(Exit.INTERRUPTED)
        self.api.stopping = True
        print(
            "spire-kms-reconciler: interrupted: no new write is sent; the calls in flight finish "
            "and the report follows (Ctrl-C again to quit at once)",
            file=sys.stderr,
        )


async def _once(args: argparse.Namespace, settings: Settings, server_id: str, out: TextIO) -> int:
    jobs = [j for j in JOBS if args.job in ("all", j.name)]
    reports: list[RunReport] = []
    as_json = args.output == "json"
    loop = asyncio.get_running_loop()
    async with aws_session(settings) as api:
        interrupt = _Interrupt(api)
        loop.add_signal_handler(signal.SIGINT, interrupt)
        line = None if as_json else ProgressLine.for_terminal(sys.stderr)
        ctx = Context(
            settings, server_id, api, dry_run=args.dry_run, progress=line.show if line else None
        )
        try:
            for job in jobs:
                if interrupt.count:
                    break
                if not job.enabled(settings):
                    if not as_json:
                        print(
                            f"{job.name}: disabled in settings ([{job.name}] enabled = false)",
                            file=out,
                        )
                    continue
                report = await job.once(ctx)
                if line is not None:
                    line.clear()
                reports.append(report)
                if not as_json:
                    print_report(report, out)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
    code = Exit.INTERRUPTED if interrupt.count else exit_code(reports)
    if as_json:
        write_json({"exit_code": int(code), "runs": [report_dict(r) for r in reports]}, out)
    return code


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


async def _keys(args: argparse.Namespace, settings: Settings, server_id: str, out: TextIO) -> int:
    try:
        async with aws_session(settings) as api:
            listing = await list_keys(api, settings, server_id)
    except AccessDenied as exc:
        print(f"spire-kms-reconciler: {exc.explain()}", file=sys.stderr)
        return Exit.PERMISSION
    except AwsError as exc:
        print(f"spire-kms-reconciler: {exc}", file=sys.stderr)
        return Exit.FAILURES
    if listing.skew_warning is not None:
        # Staleness is judged on AWS's clock, never on one AWS contradicts.
        print(
            f"spire-kms-reconciler: warning: {listing.skew_warning}; verdicts use AWS's clock",
            file=sys.stderr,
        )
    verdicts = [
        v
        for v in listing.verdicts
        if (not args.verdict or v.verdict in args.verdict)
        and (args.server is None or v.server_id == args.server)
    ]
    shown = {v.arn for v in verdicts}
    findings = [
        f for f in listing.findings if f.arn in shown or (not args.verdict and not args.server)
    ]
    rows = key_rows(verdicts, findings, server_id)
    if args.output == "json":
        write_json(rows, out)
    else:
        print_keys_table(rows, out)
        for finding in findings:
            print(f"finding  {finding.anomaly.value}  {finding.arn}  ({finding.detail})", file=out)
    for err in listing.errors:
        print(f"spire-kms-reconciler: read error: {err}", file=sys.stderr)
    return Exit.FAILURES if listing.errors else Exit.OK


async def _check(args: argparse.Namespace, settings: Settings, server_id: str, out: TextIO) -> int:
    report = offline_report(settings, server_id)
    if not args.offline:
        report.spire = await spire_status(settings)
        async with aws_session(settings) as api:
            report.permissions = permissions(api, settings)
            await probe_all(report.permissions)
    code = Exit.PERMISSION if report.denied else Exit.FAILURES if report.failed else Exit.OK
    if args.output == "json":
        write_json({"exit_code": int(code), **report.as_dict()}, out)
    else:
        print_check(report, out)
    return code
