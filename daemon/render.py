"""What the one-shot commands print: run reports, the key listing, the check, for a person
(text) or a program (JSON)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, TextIO

from daemon import spire
from daemon.check import CheckReport
from daemon.jobs import summary_fields
from daemon.model import ActionResult, Finding, KeyVerdict, RunReport
from daemon.plan.common import iso
from daemon.progress import Snapshot


def _target(result: ActionResult) -> str:
    action = result.action
    target = action.alias_name or action.arn
    if action.server_id:
        target += f" (server {action.server_id}"
        target += f", {action.spire_key_id})" if action.spire_key_id else ")"
    return target


def print_report(report: RunReport, out: TextIO) -> None:
    """A run's summary for a person: counts, then one line per action and finding."""
    fields = summary_fields(report)
    mode = " (dry run: nothing changed)" if report.dry_run else ""
    print(
        f"{report.job}: {fields['outcome']}{mode} in {fields['duration_seconds']}s, "
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
        line = f"    {result.outcome.value:<8} {a.kind.value:<18} {_target(result)}  ({a.reason})"
        if result.error:
            line += f" error: {result.error}"
        print(line, file=out)
    for finding in report.plan.findings:
        print(
            f"    finding  {finding.anomaly.value:<18} {finding.arn}  ({finding.detail})", file=out
        )
    for err in report.read_errors:
        print(f"    read error: {err}", file=out)


def report_dict(report: RunReport) -> dict[str, Any]:
    """A run's report as JSON-ready data: the summary event's fields, every action's result,
    every finding."""
    fields = summary_fields(report)
    fields["error"] = report.error
    fields["spire_server"] = report.spire.detail if report.spire is not None else None
    fields["failure"] = report.plan.failure
    fields["results"] = [
        {
            "outcome": r.outcome.value,
            "action": r.action.kind.value,
            "key_arn": r.action.arn,
            "alias_name": r.action.alias_name,
            "server_id": r.action.server_id,
            "spire_key_id": r.action.spire_key_id,
            "reason": r.action.reason,
            "error": r.error,
        }
        for r in report.results
    ]
    fields["finding_list"] = [
        {"anomaly": f.anomaly.value, "key_arn": f.arn, "detail": f.detail}
        for f in report.plan.findings
    ]
    fields["read_errors"] = list(report.read_errors)
    return fields


def write_json(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")


def stamp_time(raw: str | None) -> str | None:
    """A spire-last-update value as a UTC time, or None when it is not one."""
    parsed = spire.parse_last_update(raw)
    text = iso(parsed) if parsed is not None else "?"
    return None if text == "?" else text


def key_rows(
    verdicts: Sequence[KeyVerdict], findings: Sequence[Finding], server_id: str
) -> list[dict[str, Any]]:
    """One row per key for ``keys``, sorted by server, SPIRE key ID and ARN."""
    return [
        {
            "key_arn": v.arn,
            "server_id": v.server_id,
            "spire_key_id": v.spire_key_id,
            "key_state": v.state,
            "last_update": v.last_update,
            "last_update_time": stamp_time(v.last_update),
            "this_server": v.server_id == server_id,
            "verdict": v.verdict.value,
            "reason": v.reason,
            "findings": [
                {"anomaly": f.anomaly.value, "detail": f.detail} for f in findings if f.arn == v.arn
            ],
        }
        for v in sorted(verdicts, key=lambda v: (v.server_id or "", v.spire_key_id or "", v.arn))
    ]


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


def print_check(report: CheckReport, out: TextIO) -> None:
    """``check``'s findings for a person."""
    print(
        f"settings: ok (trust domain {report.trust_domain}, server ID {report.server_id})",
        file=out,
    )
    for warning in report.warnings:
        print(f"settings: warning: {warning}", file=out)
    if report.spire is None:
        print("offline: neither SPIRE nor AWS was asked anything", file=out)
        return
    print(f"spire server: {report.spire}", file=out)
    width = max((len(p.action) for p in report.permissions), default=0)
    print(f"  {'PERMISSION':<{width}}  {'NEEDED BY':<16} RESULT", file=out)
    for permission in report.permissions:
        print(permission.line(width), file=out)


class ProgressLine:
    """A live progress line on a terminal (stderr), redrawn at most five times a second."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn = False
        self._last = 0.0

    @classmethod
    def for_terminal(cls, stream: TextIO) -> ProgressLine | None:
        """A line on ``stream`` if it is a terminal, else None (logs and pipes get events)."""
        try:
            return cls(stream) if stream.isatty() else None
        except (AttributeError, ValueError):
            return None

    def show(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if snapshot.done < snapshot.total and now - self._last < 0.2:
            return
        self._last = now
        self._stream.write("\r\x1b[K" + snapshot.line())
        self._stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False
