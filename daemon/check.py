"""``check``: the settings, SPIRE's liveness and each AWS permission a job needs, probed where a
call exists that changes nothing, and said plainly where none does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from daemon import spire
from daemon.aws.client import AwsApi
from daemon.aws.errors import AccessDenied, AwsError
from daemon.liveness import probe_for
from daemon.settings import Settings, liveness_problem, settings_warnings

#: A probe returns a detail to show beside "ok", or raises the AWS error it met.
Probe = Callable[[], Awaitable[str]]


class NotProbed(Exception):
    """The probe could not run (nothing to call it on); the message says why."""


@dataclass
class Permission:
    """One IAM action, the jobs that need it, and what probing it found."""

    action: str
    needed_by: tuple[str, ...]
    probe: Probe | None = None  # None: no call exists that changes nothing
    result: str = "not probed"  # ok | DENIED | error | not probed
    detail: str = ""

    def line(self, width: int) -> str:
        needed = ", ".join(self.needed_by)
        text = f"{self.result}: {self.detail}" if self.detail else self.result
        if self.result == "ok" and self.detail:
            text = f"ok ({self.detail})"
        return f"  {self.action:<{width}}  {needed:<16} {text}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "permission": self.action,
            "needed_by": list(self.needed_by),
            "result": self.result,
            "detail": self.detail,
        }


@dataclass
class CheckReport:
    """What ``check`` found."""

    trust_domain: str
    server_id: str
    warnings: list[str]
    spire: str | None = None  # None: offline
    permissions: list[Permission] = field(default_factory=list)

    @property
    def denied(self) -> bool:
        return any(p.result == "DENIED" for p in self.permissions)

    @property
    def failed(self) -> bool:
        return any(p.result == "error" for p in self.permissions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": {
                "ok": True,
                "trust_domain": self.trust_domain,
                "server_id": self.server_id,
                "warnings": self.warnings,
            },
            "spire_server": self.spire,
            "permissions": [p.as_dict() for p in self.permissions],
        }


def permissions(api: AwsApi, settings: Settings) -> list[Permission]:
    """The permissions the enabled jobs need, each with the job(s) that need it.

    Reads are probed with one small call; the writes have no call that changes nothing (KMS
    has no dry-run parameter), so they are listed as not probed, with that reason.
    """
    reclaim = settings.reclaim.enabled
    both = ("refresh", "reclaim") if reclaim else ("refresh",)
    found: list[str] = []

    async def get_resources() -> str:
        resources = await api.get_resources({spire.TAG_TRUST_DOMAIN: [settings.trust_domain]})
        found.extend(r.arn for r in resources)
        return f"{len(resources)} keys tagged {settings.trust_domain}"

    async def describe_key() -> str:
        if not found:
            raise NotProbed("no key of the trust domain to describe")
        await api.describe_key(found[0])
        return ""

    async def list_aliases() -> str:
        await api.probe_list_aliases()
        return ""

    async def list_resource_tags() -> str:
        if not found:
            raise NotProbed("no key of the trust domain to read the tags of")
        await api.list_resource_tags(found[0])
        return ""

    writes = "no call exists that changes nothing"
    listed = [
        Permission("tag:GetResources", both, get_resources),
        Permission("kms:DescribeKey", both, describe_key),
    ]
    alias_jobs = (("refresh",) if settings.refresh.migrate_legacy_aliases else ()) + (
        ("reclaim",) if reclaim else ()
    )
    if alias_jobs:
        listed.append(Permission("kms:ListAliases", alias_jobs, list_aliases))
    if reclaim:
        listed.append(Permission("kms:ListResourceTags", ("reclaim",), list_resource_tags))
    listed += [
        Permission("tag:TagResources", both, detail=writes),
        Permission("kms:TagResource", both, detail=writes),
    ]
    if settings.refresh.refresh_aliases:
        listed.append(Permission("kms:UpdateAlias", ("refresh",), detail=writes))
    if reclaim:
        listed.append(Permission("kms:ScheduleKeyDeletion", ("reclaim",), detail=writes))
    return listed


async def probe_all(listed: list[Permission]) -> None:
    """Run each permission's probe in order (a later probe may use what an earlier found)."""
    for permission in listed:
        if permission.probe is None:
            continue
        try:
            permission.detail = await permission.probe()
            permission.result = "ok"
        except NotProbed as exc:
            permission.result, permission.detail = "not probed", str(exc)
        except AccessDenied as exc:
            permission.result, permission.detail = "DENIED", exc.explain()
        except AwsError as exc:
            permission.result, permission.detail = "error", str(exc)


async def spire_status(settings: Settings) -> str:
    """One line on whether the local SPIRE server answers alive."""
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


def offline_report(settings: Settings, server_id: str) -> CheckReport:
    """The settings part of the report: nothing is asked of AWS or SPIRE."""
    return CheckReport(settings.trust_domain, server_id, list(settings_warnings(settings)))
