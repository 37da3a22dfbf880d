"""The settings sections: [refresh], [reclaim], [metrics], [log], [aws]."""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import timedelta
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from daemon.durations import Duration, format_duration, try_duration
from daemon.settings.checks import (
    _CLOCK_SKEW_CEILING,
    _MODEL_CONFIG,
    STALE_AFTER_FLOOR,
    _cross_error,
    _Float,
    _Int,
    _lower,
    _none_if_empty,
    _raw,
    _validate_with_cross_checks,
    duration_within,
    jitter_fraction,
    job_intervals,
    matches,
    positive_durations,
    rule,
)
from daemon.spire import (
    SPIRE_TAGS,
)

# --- sections -----------------------------------------------------------------------------------


class RefreshSettings(BaseModel):
    """The refresh job: keep this server's keys (and aliases) alive."""

    model_config = _MODEL_CONFIG

    interval: Duration = Field(
        default=timedelta(hours=6),
        description="How often the refresh job runs (it also runs once at start; at least 1s).",
    )
    refresh_aliases: bool = Field(
        default=True,
        description="Bump each SPIRE alias's LastUpdatedDate (UpdateAlias to the same target) so "
        "alias-mode peers and a downgraded SPIRE keep seeing this server as alive.",
    )
    migrate_legacy_aliases: bool = Field(
        default=True,
        description="Give alias-managed keys without SPIRE tags the five tags SPIRE's tag-based "
        "discovery expects; needs the account-wide ListAliases scan.",
    )
    alias_scan_interval: Duration = Field(
        default=timedelta(hours=24),
        description="How often the account-wide ListAliases scan for legacy migration runs "
        "(also once at start); at least refresh.interval.",
    )
    jitter: _Float = Field(
        default=0.1,
        description="Random delay added to each run, as a fraction of interval (0 to 0.5).",
    )

    _intervals = job_intervals("interval", "alias_scan_interval")
    _jitter = jitter_fraction("jitter")

    @model_validator(mode="wrap")
    @classmethod
    def _cross_checks(cls, data: object, handler: ModelWrapValidatorHandler[Self]) -> Self:
        return _validate_with_cross_checks(cls, data, handler, _refresh_cross_checks)


def _field_default(model: type[BaseModel], name: str) -> object:
    return model.model_fields[name].default


def _refresh_cross_checks(data: object) -> list[InitErrorDetails]:
    raw_interval = _raw(data, "interval", _field_default(RefreshSettings, "interval"))
    raw_scan = _raw(
        data, "alias_scan_interval", _field_default(RefreshSettings, "alias_scan_interval")
    )
    interval, scan = try_duration(raw_interval), try_duration(raw_scan)
    if interval is None or scan is None or scan <= timedelta(0) or scan >= interval:
        return []
    return [
        _cross_error(
            ("alias_scan_interval",),
            f"must be at least refresh.interval ({format_duration(interval)}), "
            f"got {format_duration(scan)}; raise it along with the interval",
            raw_scan,
        )
    ]


_TAG_KEY_RE = re.compile(r"[\w\s.:/=+@-]+")


class ReclaimSettings(BaseModel):
    """The reclaim job: schedule deletion of keys no SPIRE server has refreshed for too long."""

    model_config = _MODEL_CONFIG

    enabled: bool = Field(default=True, description="Run the reclaim job at all.")
    interval: Duration = Field(
        default=timedelta(hours=48),
        description="How often the reclaim job runs (at least 1s). Also the window of "
        "max_reclaims, and of the daemon's marks: a key it marked spire-active=false within "
        "one interval (plus jitter) is an interrupted reclaim, completed; an older mark on an "
        "Enabled key is an operator's restore, left alone.",
    )
    start_delay: Duration = Field(
        default=timedelta(minutes=10),
        description="How long after start the first reclaim run waits (refresh runs first).",
    )
    stale_after: Duration = Field(
        default=timedelta(days=14),
        description="A key whose spire-last-update is this old (or older, or missing) is stale. "
        "At least 1d and more than twice refresh.interval.",
    )
    pending_window_days: _Int = Field(
        default=7,
        description="ScheduleKeyDeletion PendingWindowInDays: days to cancel a deletion (7 to 30).",
    )
    max_reclaims: _Int = Field(
        default=10,
        description="Budget: the most keys of the trust domain scheduled for deletion within any "
        "reclaim.interval, by all daemons together, counted from AWS's state (keys marked "
        "spire-active=false and pending deletion). Over it, a run reclaims the stalest keys up "
        "to the budget, holds the rest back and ends refused (0 or more; 0 reclaims nothing).",
    )
    max_reclaim_fraction: _Float = Field(
        default=0.5,
        description="Blast-radius guard: a run that would leave more than this share of the "
        "trust domain's servers with no live key reclaims nothing (above 0, at most 1). Servers "
        "count through well-formed keys known not to be pending deletion.",
    )
    protect_tag: str = Field(
        default="spire-protect",
        description="A key with this tag set to 'true' is never reclaimed.",
    )
    clock_skew_tolerance: Duration = Field(
        default=timedelta(minutes=5),
        description="Reclaim acts on nothing while the local clock and AWS's differ by more than "
        "this (above 0, at most 1h); also the tolerance for spire-last-update in the future.",
    )
    jitter: _Float = Field(
        default=0.1,
        description="Random delay added to each run, as a fraction of interval (0 to 0.5).",
    )

    _intervals = job_intervals("interval")
    _jitter = jitter_fraction("jitter")

    _stale_after = rule(
        "stale_after",
        holds=lambda td: td >= STALE_AFTER_FLOOR,
        otherwise=f"must be at least {format_duration(STALE_AFTER_FLOOR)} (SPIRE refreshes its "
        "keys every 6h; a shorter window would reclaim live keys)",
    )
    _pending_window = rule(
        "pending_window_days",
        holds=lambda days: 7 <= days <= 30,
        otherwise="must be between 7 and 30 (AWS's PendingWindowInDays limit)",
    )
    _max_reclaims = rule(
        "max_reclaims", holds=lambda n: n >= 0, otherwise="must be 0 or more (0 reclaims nothing)"
    )
    _max_fraction = rule(
        "max_reclaim_fraction",
        holds=lambda share: 0 < share <= 1,
        otherwise="must be above 0 and at most 1 (a share of the trust domain's servers)",
    )

    @field_validator("protect_tag")
    @classmethod
    def _protect_tag(cls, value: str) -> str:
        if not 1 <= len(value) <= 128:
            raise ValueError("must be 1 to 128 characters (an AWS tag key)")
        if value.lower().startswith("aws:"):
            raise ValueError("must not start with 'aws:' (reserved by AWS)")
        if value in SPIRE_TAGS:
            raise ValueError(f"must not be one of SPIRE's own tags ({', '.join(SPIRE_TAGS)})")
        if not _TAG_KEY_RE.fullmatch(value):
            raise ValueError(
                "may contain only letters, digits, spaces and _ . : / = + - @ (an AWS tag key)"
            )
        return value

    _clock_skew = duration_within("clock_skew_tolerance", _CLOCK_SKEW_CEILING)


class JobSections(BaseModel):
    """The jobs' sections: one field a job, named as the job and as its TOML table, whose model
    has at least ``interval`` and ``jitter``. :class:`~daemon.settings.schema.Settings` has them
    all; a new job's section is one more field here (and its model above)."""

    refresh: RefreshSettings = Field(default_factory=RefreshSettings, description="[refresh] job.")
    reclaim: ReclaimSettings = Field(default_factory=ReclaimSettings, description="[reclaim] job.")


_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_LISTEN_HINT = "host:port, e.g. 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464"


def _split_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[ipv6]:port``; raise ValueError saying what is wrong."""
    if address.startswith("["):
        host, sep, port_text = address[1:].partition("]:")
        if not sep:
            raise ValueError(f"must be {_LISTEN_HINT}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address (expected {_LISTEN_HINT})") from None
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or not host:
            raise ValueError(f"must be {_LISTEN_HINT}")
        if ":" in host:
            raise ValueError(f"an IPv6 host goes in brackets (expected {_LISTEN_HINT})")
        if not _HOST_RE.fullmatch(host):
            raise ValueError(
                f"{host!r} is not a host name or IPv4 address (expected {_LISTEN_HINT})"
            )
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number (expected {_LISTEN_HINT})")
    port = int(port_text)
    if port > 65535:
        raise ValueError("port must be between 0 and 65535")
    return host, port


class MetricsSettings(BaseModel):
    """The Prometheus metrics and ``/healthz`` listener."""

    model_config = _MODEL_CONFIG

    enabled: bool = Field(default=True, description="Serve /metrics and /healthz in `run`.")
    listen_address: str = Field(
        default="127.0.0.1:9464",
        description="host:port to listen on; IPv6 in brackets ([::1]:9464); port 0: any free one.",
    )

    @field_validator("listen_address")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        _split_host_port(value)
        return value

    @property
    def host(self) -> str:
        """The host part of ``listen_address``, IPv6 without its brackets."""
        return _split_host_port(self.listen_address)[0]

    @property
    def port(self) -> int:
        """The port part of ``listen_address``."""
        return _split_host_port(self.listen_address)[1]


class LogSettings(BaseModel):
    """Structured logging."""

    model_config = _MODEL_CONFIG

    format: Annotated[Literal["json", "console"], BeforeValidator(_lower)] = Field(
        default="json", description="json (one object a line) or console (for people)."
    )
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = Field(
        default="info", description="Lowest level logged: debug, info, warning or error (any case)."
    )


class AwsSettings(BaseModel):
    """How the daemon talks to AWS (credentials and region come from the standard AWS chain)."""

    model_config = _MODEL_CONFIG

    connect_timeout: Duration = Field(
        default=timedelta(seconds=5), description="Connect timeout of each AWS request."
    )
    read_timeout: Duration = Field(
        default=timedelta(seconds=30), description="Read timeout of each AWS request."
    )
    max_attempts: _Int = Field(
        default=5,
        description="Attempts per AWS call, the first included; retries throttling, 5xx (1 to 20).",
    )
    max_concurrency: _Int = Field(default=8, description="AWS calls in flight at once (1 to 64).")
    mutating_calls_per_second: _Float = Field(
        default=5.0,
        description="Client-side rate limit per mutating operation, a second (above 0, at most "
        "50). Tagging is counted in keys: kms:TagResource and tag:TagResources share one budget, "
        "and a TagResources call takes one unit per key, since AWS tags each key through KMS's "
        "TagResource. The default stays at or under AWS's default quotas, which the SPIRE "
        "servers share (kms:TagResource 10/s, kms:ScheduleKeyDeletion 15/s, tag:TagResources "
        "5/s); raise it only with raised quotas.",
    )
    endpoint_url: Annotated[str | None, BeforeValidator(_none_if_empty)] = Field(
        default=None,
        description="Explicit endpoint for both services; normally unset, botocore reads "
        "AWS_ENDPOINT_URL itself.",
    )

    _timeouts = positive_durations("connect_timeout", "read_timeout")
    _max_attempts = rule(
        "max_attempts",
        holds=lambda n: 1 <= n <= 20,
        otherwise="must be between 1 and 20 (total attempts, the first included)",
    )
    _max_concurrency = rule(
        "max_concurrency", holds=lambda n: 1 <= n <= 64, otherwise="must be between 1 and 64"
    )
    _rate = rule(
        "mutating_calls_per_second",
        holds=lambda rate: math.isfinite(rate) and 0 < rate <= 50,
        otherwise="must be above 0 and at most 50 (KMS quotas are shared with SPIRE)",
    )
    _endpoint_url = matches(
        "endpoint_url", r"https?://[^\s/?#]+(/\S*)?", "must be an http:// or https:// URL"
    )
