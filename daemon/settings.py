"""The daemon's settings: a TOML file, overridden by ``SPIRE_KMS_RECONCILER_*`` variables.

:func:`load_settings` is the one entry point the CLI uses. It reports every problem at once as a
:class:`SettingsError` whose lines read ``dotted.name: what is wrong (what is allowed)``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as _PydanticSettingsError
from pydantic_settings.sources import DefaultSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from daemon.durations import Duration, format_duration, parse_duration, try_duration
from daemon.spire import (
    SPIRE_TAGS,
    ContractError,
    parse_trust_domain,
    read_server_id_file,
    validate_server_id_value,
)
from daemon.spire_config import SpireConfigError, SpireValue, read_spire_server_config

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "AwsSettings",
    "Duration",
    "LogSettings",
    "MetricsSettings",
    "ReclaimSettings",
    "RefreshSettings",
    "Settings",
    "SettingsError",
    "format_duration",
    "load_settings",
    "parse_duration",
]

DEFAULT_CONFIG_PATH = Path("/etc/spire-kms-reconciler/config.toml")
ENV_PREFIX = "SPIRE_KMS_RECONCILER_"
_ENV_NESTED_DELIMITER = "__"

#: SPIRE refreshes its keys every 6 h; a stale window under a day would reclaim live keys.
STALE_AFTER_FLOOR = timedelta(days=1)
_CLOCK_SKEW_CEILING = timedelta(hours=1)
_JITTER_CEILING = 0.5


class SettingsError(Exception):
    """Settings that cannot be used; ``problems`` lists every one, ``str()`` one per line."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --- cross-field checks that still run when other fields fail ---------------------------------

_CROSS_ERROR_TYPE = "settings_cross_field"
_M = TypeVar("_M", bound=BaseModel)


def _cross_error(loc: tuple[str | int, ...], message: str, value: object) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(_CROSS_ERROR_TYPE, "{message}", {"message": message}),
        loc=loc,
        input=value,
    )


def _reraisable(error: ErrorDetails) -> InitErrorDetails:
    if error["type"] == _CROSS_ERROR_TYPE:
        return _cross_error(error["loc"], error["msg"], error["input"])
    details = InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"])
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details


def _raw(data: object, name: str, default: object = None) -> object:
    """Read ``name`` from raw input (a mapping) or an already built model."""
    if isinstance(data, Mapping):
        return data.get(name, default)
    return getattr(data, name, default)


def _unset(value: object) -> bool:
    # SPIRE treats an empty string as unset; so do we, which lets an environment variable
    # set to "" clear a value the file sets.
    return value is None or value == ""


def _validate_with_cross_checks(
    model: type[_M],
    data: object,
    handler: ModelWrapValidatorHandler[_M],
    checks: Callable[[object], list[InitErrorDetails]],
) -> _M:
    """Run field validation and ``checks`` on the raw input, and report both kinds together.

    An ``after`` model validator would stay silent whenever any field fails, hiding problems
    an operator then discovers one start at a time.
    """
    cross = checks(data)
    try:
        result = handler(data)
    except ValidationError as exc:
        if not cross:
            raise
        errors = [_reraisable(error) for error in exc.errors()]
        raise ValidationError.from_exception_data(model.__name__, [*errors, *cross]) from None
    if cross:
        raise ValidationError.from_exception_data(model.__name__, cross)
    return result


# --- small field checks -------------------------------------------------------------------------


def _positive(td: timedelta) -> timedelta:
    if td <= timedelta(0):
        raise ValueError("must be greater than 0 (e.g. 6h)")
    return td


#: The shortest interval a job may have; below SHORT_INTERVAL, check and the start warn.
MIN_INTERVAL = timedelta(seconds=1)
SHORT_INTERVAL = timedelta(minutes=5)


def _interval(td: timedelta) -> timedelta:
    if td < MIN_INTERVAL:
        raise ValueError(
            f"must be at least {format_duration(MIN_INTERVAL)} (SPIRE's own cadence is 6h)"
        )
    return td


def _jitter(value: float) -> float:
    if not 0 <= value <= _JITTER_CEILING:
        raise ValueError(f"must be between 0 and {_JITTER_CEILING} (a fraction of the interval)")
    return value


def _not_bool(value: object) -> object:
    # pydantic reads true as 1 in lax mode; a boolean where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


_Int = Annotated[int, BeforeValidator(_not_bool)]
_Float = Annotated[float, BeforeValidator(_not_bool)]


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _none_if_empty(value: object) -> object:
    return None if value == "" else value


def _readable_duration_defaults(schema: dict[str, Any], model: type[Any]) -> None:
    """Show duration defaults in the JSON schema as ``6h`` rather than ISO 8601 ``PT6H``."""
    properties = schema.get("properties")
    if (
        not isinstance(properties, dict)
        or not isinstance(model, type)
        or not issubclass(model, BaseModel)
    ):
        return
    for name, field in model.model_fields.items():
        prop = properties.get(name)
        if isinstance(field.default, timedelta) and isinstance(prop, dict):
            prop["default"] = format_duration(field.default)


_MODEL_CONFIG = ConfigDict(extra="forbid", json_schema_extra=_readable_duration_defaults)


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

    _intervals = field_validator("interval", "alias_scan_interval")(_interval)
    _jitter_range = field_validator("jitter")(_jitter)

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

    _intervals = field_validator("interval")(_interval)
    _jitter_range = field_validator("jitter")(_jitter)

    @field_validator("stale_after")
    @classmethod
    def _stale_after_floor(cls, value: timedelta) -> timedelta:
        if value < STALE_AFTER_FLOOR:
            raise ValueError(
                f"must be at least {format_duration(STALE_AFTER_FLOOR)} (SPIRE refreshes its "
                "keys every 6h; a shorter window would reclaim live keys)"
            )
        return value

    @field_validator("pending_window_days")
    @classmethod
    def _pending_window(cls, value: int) -> int:
        if not 7 <= value <= 30:
            raise ValueError("must be between 7 and 30 (AWS's PendingWindowInDays limit)")
        return value

    @field_validator("max_reclaims")
    @classmethod
    def _max_reclaims(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more (0 reclaims nothing)")
        return value

    @field_validator("max_reclaim_fraction")
    @classmethod
    def _max_fraction(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(
                "must be above 0 and at most 1 (a share of the trust domain's servers)"
            )
        return value

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

    @field_validator("clock_skew_tolerance")
    @classmethod
    def _clock_skew(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= _CLOCK_SKEW_CEILING:
            raise ValueError(f"must be above 0 and at most {format_duration(_CLOCK_SKEW_CEILING)}")
        return value


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

    _positive_timeouts = field_validator("connect_timeout", "read_timeout")(_positive)

    @field_validator("max_attempts")
    @classmethod
    def _max_attempts(cls, value: int) -> int:
        if not 1 <= value <= 20:
            raise ValueError("must be between 1 and 20 (total attempts, the first included)")
        return value

    @field_validator("max_concurrency")
    @classmethod
    def _max_concurrency(cls, value: int) -> int:
        if not 1 <= value <= 64:
            raise ValueError("must be between 1 and 64")
        return value

    @field_validator("mutating_calls_per_second")
    @classmethod
    def _rate(cls, value: float) -> float:
        if not (math.isfinite(value) and 0 < value <= 50):
            raise ValueError("must be above 0 and at most 50 (KMS quotas are shared with SPIRE)")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/?#]+(/\S*)?", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


# --- the whole ----------------------------------------------------------------------------------

#: AWS region names: a partition prefix of 2 to 4 letters (us, cn, eusc...), words, a number.
_REGION_RE = re.compile(r"[a-z]{2,4}(?:-[a-z]+)+-\d{1,2}")
_HEALTH_URL_RE = re.compile(r"https?://[^\s/?#@]+(?:/\S*)?")
_HEALTH_TIMEOUT_CEILING = timedelta(seconds=5)
_ASSUME_AND_URL = (
    "cannot be true while a spire_health_url is set: the probe is what makes a stamp mean "
    "that SPIRE is alive; remove assume_spire_alive to probe the URL"
)
_NEITHER_IDENTIFIER = "requires a key identifier file or a key identifier value"
_BOTH_IDENTIFIERS = "can't have a key identifier file and a key identifier value at the same time"
_IDENTIFIER_LOC = "key_identifier_file/key_identifier_value"


class Settings(BaseSettings):
    """Everything the daemon is configured with. Build it with :func:`load_settings`.

    Constructed directly (``Settings(trust_domain=...)``), keyword arguments beat the process
    environment; :func:`load_settings` gives the environment precedence over the file.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
    )

    trust_domain: str = Field(
        description="The SPIFFE trust domain of the SPIRE servers, as in SPIRE's config: "
        "example.org or spiffe://example.org (tags and aliases carry the bare name)."
    )
    region: Annotated[str | None, BeforeValidator(_none_if_empty)] = Field(
        default=None,
        description="AWS region of the keys (e.g. us-east-1); unset: AWS_REGION, then "
        "AWS_DEFAULT_REGION, then the profile's region (the order of the Go SDK SPIRE uses).",
    )
    key_identifier_file: Annotated[Path | None, BeforeValidator(_none_if_empty)] = Field(
        default=None,
        description="SPIRE's key_identifier_file (the server ID as a UUID); the daemon reads it "
        "and never creates it. Set this or key_identifier_value.",
    )
    key_identifier_value: Annotated[str | None, BeforeValidator(_none_if_empty)] = Field(
        default=None,
        description="SPIRE's key_identifier_value (A-Za-z0-9/_-, at most 256 bytes). Set this "
        "or key_identifier_file.",
    )
    spire_server_config: Annotated[Path | None, BeforeValidator(_none_if_empty)] = Field(
        default=None,
        description="SPIRE's server configuration file (server.conf: HCL, or JSON as SPIRE's "
        "Helm chart renders it), read exactly as SPIRE reads it. When set, trust_domain, the "
        "aws_kms KeyManager's region and key_identifier_file or key_identifier_value (from "
        "plugin_data, or from an absolute plugin_data_file), and the health check URL are "
        "read from it. A setting given here or in the environment must agree with SPIRE's "
        "(the two key identifier settings count as one).",
    )
    spire_server_config_expand_env: bool = Field(
        default=False,
        description="Expand $VAR and ${VAR} in spire_server_config before reading it, as "
        "spire-server run -expandEnv does (unset variables become empty, $$ stands for $). "
        "The daemon expands from its own environment: give it the variables spire-server "
        "gets (the same EnvironmentFile=).",
    )
    spire_health_url: Annotated[str | None, BeforeValidator(_none_if_empty)] = Field(
        default=None,
        description="http(s) URL of the local SPIRE server's health endpoint (its live check, "
        "e.g. http://localhost:8080/live). Every refresh run GETs it before writing anything "
        "and writes nothing unless it answers 2xx. Default: derived from spire_server_config's "
        "health_checks block when listener_enabled = true (SPIRE's defaults: localhost, port "
        "80, /live). run and once --job refresh need this or assume_spire_alive.",
    )
    spire_health_timeout: Duration = Field(
        default=timedelta(seconds=5),
        description="How long the SPIRE health probe waits for an answer (above 0, at most 5s).",
    )
    assume_spire_alive: bool = Field(
        default=False,
        description="UNSAFE: stamp this server's keys without asking SPIRE whether it is alive. "
        "A crashed or decommissioned SPIRE server's keys then stay alive (and billed) for as "
        "long as this daemon runs. Only for hosts where no health endpoint can be reached; "
        "not together with spire_health_url.",
    )
    dry_run: bool = Field(
        default=False,
        description="Observe and decide, log the plan, make no mutating AWS call.",
    )
    refresh: RefreshSettings = Field(default_factory=RefreshSettings, description="[refresh] job.")
    reclaim: ReclaimSettings = Field(default_factory=ReclaimSettings, description="[reclaim] job.")
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="[metrics] listener."
    )
    log: LogSettings = Field(default_factory=LogSettings, description="[log] output.")
    aws: AwsSettings = Field(default_factory=AwsSettings, description="[aws] client behaviour.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets directory: settings come from the TOML file and the environment.
        return init_settings, env_settings

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        try:
            return parse_trust_domain(value)
        except ContractError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("spire_health_url")
    @classmethod
    def _spire_health_url(cls, value: str | None) -> str | None:
        if value is not None and not _HEALTH_URL_RE.fullmatch(value):
            raise ValueError(
                "must be an http:// or https:// URL with a host, e.g. http://localhost:8080/live"
            )
        return value

    @field_validator("spire_health_timeout")
    @classmethod
    def _spire_health_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= _HEALTH_TIMEOUT_CEILING:
            raise ValueError(
                f"must be above 0 and at most {format_duration(_HEALTH_TIMEOUT_CEILING)}"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION_RE.fullmatch(value):
            raise ValueError(
                "must be an AWS region name like us-east-1 (or unset to use the AWS configuration)"
            )
        return value

    @field_validator("key_identifier_value")
    @classmethod
    def _key_identifier_value(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_server_id_value(value)
        except ContractError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="wrap")
    @classmethod
    def _cross_checks(cls, data: object, handler: ModelWrapValidatorHandler[Self]) -> Self:
        return _validate_with_cross_checks(cls, data, handler, _settings_cross_checks)


def _settings_cross_checks(data: object) -> list[InitErrorDetails]:
    errors: list[InitErrorDetails] = []
    assume = _raw(data, "assume_spire_alive")
    if assume is True or (isinstance(assume, str) and assume.strip().lower() == "true"):
        url = _raw(data, "spire_health_url")
        if not _unset(url):
            errors.append(_cross_error(("assume_spire_alive",), _ASSUME_AND_URL, assume))
    file_set = not _unset(_raw(data, "key_identifier_file"))
    value_set = not _unset(_raw(data, "key_identifier_value"))
    if not file_set and not value_set:
        errors.append(_cross_error((_IDENTIFIER_LOC,), _NEITHER_IDENTIFIER, None))
    elif file_set and value_set:
        errors.append(_cross_error((_IDENTIFIER_LOC,), _BOTH_IDENTIFIERS, None))

    refresh, reclaim = _raw(data, "refresh"), _raw(data, "reclaim")
    interval = try_duration(_raw(refresh, "interval", _field_default(RefreshSettings, "interval")))
    raw_stale = _raw(reclaim, "stale_after", _field_default(ReclaimSettings, "stale_after"))
    stale_after = try_duration(raw_stale)
    if (
        interval is not None
        and stale_after is not None
        and stale_after >= STALE_AFTER_FLOOR  # below the floor is reported already
        and stale_after <= interval * 2
    ):
        errors.append(
            _cross_error(
                ("reclaim", "stale_after"),
                f"must be more than twice refresh.interval ({format_duration(interval)}: more "
                f"than {format_duration(interval * 2)}), got {format_duration(stale_after)}; "
                "a key could go stale between two refreshes",
                raw_stale,
            )
        )
    return errors


# --- loading ------------------------------------------------------------------------------------


class _MappingEnvSettingsSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class _FileSettingsSource(PydanticBaseSettingsSource):
    """The TOML file's table, passed through as is so unknown keys reach validation."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


_TOML_POSITION_RE = re.compile(
    r"^(?P<message>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)$"
)
_TOML_END_RE = re.compile(r"^(?P<message>.*) \(at end of document\)$")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot read it: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if match := _TOML_POSITION_RE.match(message):
            where = f"line {match['line']}, column {match['column']}"
            message = match["message"]
        elif match := _TOML_END_RE.match(message):
            lines = text.splitlines() or [""]
            where = f"line {len(lines)}, column {len(lines[-1]) + 1} (end of file)"
            message = match["message"]
        else:  # pragma: no cover - tomllib always says where
            where = "unknown position"
        raise SettingsError(f"config file {path}: {where}: invalid TOML: {message}") from None


def _env_name(loc: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + _ENV_NESTED_DELIMITER.join(str(part).upper() for part in loc)


def _unknown_env_problems(environ: Mapping[str, str]) -> list[str]:
    """Name prefixed variables that match no setting: a misspelt override must not pass silently."""
    problems = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        top = upper[len(ENV_PREFIX) :].split(_ENV_NESTED_DELIMITER, 1)[0].lower()
        if top not in Settings.model_fields:
            problems.append(
                f"{name}: unknown setting (environment variables are {ENV_PREFIX}<NAME>, nested "
                f"with '{_ENV_NESTED_DELIMITER}', e.g. {ENV_PREFIX}RECLAIM__STALE_AFTER)"
            )
    return problems


#: Settings of earlier versions, and what replaced them.
_RENAMED = {
    "reclaim.max_reclaims_per_run": "renamed max_reclaims, which now counts the trust domain's "
    "deletions within any reclaim.interval, by all daemons together (not one run's)",
}

#: Settings whose rejected value is not repeated in messages: an endpoint may carry credentials.
_UNECHOED = frozenset({"aws.endpoint_url"})
_ECHO_LIMIT = 60


def _shorten(value: object) -> str | None:
    if isinstance(value, timedelta):
        text = format_duration(value)
    elif isinstance(value, str | int | float | bool | Path):
        text = repr(str(value)) if isinstance(value, Path) else repr(value)
    else:
        return None  # a whole table, say: repeating it helps nobody
    if len(text) > _ECHO_LIMIT:
        text = text[: _ECHO_LIMIT - 1] + "…"
    return text


def _problem(
    error: ErrorDetails, env_keys: frozenset[str], origins: Mapping[str, str] | None = None
) -> str:
    loc = error["loc"]
    name = ".".join(str(part) for part in loc) or "settings"
    kind = error["type"]
    if kind == "missing":
        message = f"required setting is missing (set it in the file or as {_env_name(loc)})"
    elif kind == "extra_forbidden" and name in _RENAMED:
        message = _RENAMED[name]
    elif kind == "extra_forbidden":
        message = "unknown setting"
        parent: type[BaseModel] | None = Settings
        for part in loc[:-1]:
            field = parent.model_fields.get(str(part)) if parent else None
            annotation = field.annotation if field else None
            parent = (
                annotation
                if isinstance(annotation, type) and issubclass(annotation, BaseModel)
                else None
            )
        if parent is not None:
            message += f" (known here: {', '.join(parent.model_fields)})"
    else:
        message = error["msg"].removeprefix("Value error, ")
        shown = None if name in _UNECHOED else _shorten(error["input"])
        if shown is not None and shown not in message and kind != _CROSS_ERROR_TYPE:
            message += f", got {shown}"
    if _env_name(loc).lower() in env_keys:
        message += f" [from {_env_name(loc)}]"
    elif origins and name in origins:
        message += f" [from {origins[name]}]"
    return f"{name}: {message}"


_IDENTIFIERS = ("key_identifier_file", "key_identifier_value")


def _given(explicit: Mapping[str, object], data: Mapping[str, object], name: str) -> object:
    """The value the environment (first) or the file gives ``name``; None when unset or empty."""
    value = explicit.get(name, data.get(name))
    return None if _unset(value) else value


def _bare_trust_domain(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return parse_trust_domain(value)
    except ContractError:
        return value  # reported by validation


def _server_id_of(kind: str, value: object) -> str | None:
    """The server ID a key identifier setting stands for; None when it cannot be read here."""
    if kind == "key_identifier_value":
        return str(value)
    try:
        return read_server_id_file(Path(str(value))).server_id
    except ContractError:
        return None


def _identifier_disagreement(
    ours: tuple[str, object], theirs: tuple[str, SpireValue], origin: str
) -> str | None:
    """Why the daemon's key identifier setting names another server than SPIRE's, or None.

    Two paths to the same file agree, and so do two that hold the same server ID (the systemd
    unit hands the daemon a copy of SPIRE's file). A SPIRE file the daemon cannot read (SPIRE's
    own 0600 file, seen from the sandbox) cannot be compared: the daemon's copy is trusted.
    """
    our_kind, our_value = ours
    their_kind, found = theirs
    if our_kind == their_kind == "key_identifier_value" and our_value == found.value:
        return None
    if our_kind == their_kind == "key_identifier_file":
        if Path(str(our_value)) == Path(found.value):
            return None
        theirs_id = _server_id_of(their_kind, found.value)
        if theirs_id is None or theirs_id == _server_id_of(our_kind, our_value):
            return None
    else:
        ours_id, theirs_id = (
            _server_id_of(our_kind, our_value),
            _server_id_of(their_kind, found.value),
        )
        if ours_id is not None and ours_id == theirs_id:
            return None
    return (
        f"{our_kind}: {str(our_value)[:_ECHO_LIMIT]!r} names another server than SPIRE's "
        f"{their_kind} {found.value[:_ECHO_LIMIT]!r} ({origin}); the daemon must keep alive "
        f"the keys of the server it runs beside: remove {our_kind} (SPIRE's is used), or fix "
        "one of the two"
    )


def _spire_layer(
    explicit: Mapping[str, object], data: Mapping[str, object]
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Settings read from SPIRE's server.conf that neither the environment nor the file sets.

    ``explicit`` holds the environment's values, ``data`` the file's. Returns the values, where
    each came from (for messages) and problems with them: among those, an explicit setting that
    disagrees with SPIRE's (trust domain, region, key identifier), since silently preferring
    one of the two would keep the wrong keys alive. Raises :class:`SettingsError` when the file
    is unusable.
    """
    raw = explicit.get("spire_server_config", data.get("spire_server_config"))
    if not isinstance(raw, str | Path) or raw == "":
        return {}, {}, []  # unset, or not a path: validation reports the latter
    expand = explicit.get(
        "spire_server_config_expand_env", data.get("spire_server_config_expand_env", False)
    )
    try:
        expand = TypeAdapter(bool).validate_python(expand)
    except ValidationError:
        expand = False  # reported by the settings' own validation
    try:
        spire_config = read_spire_server_config(Path(raw), expand_env=expand)
    except SpireConfigError as exc:
        raise SettingsError(str(exc)) from None
    layer: dict[str, Any] = {}
    origins: dict[str, str] = {}
    problems: list[str] = []

    def take(name: str, found: SpireValue | None) -> None:
        if found is None:
            return
        given = _given(explicit, data, name)
        if given is None:
            layer[name] = found.value
            origins[name] = spire_config.origin(found)
            return
        same = (
            _bare_trust_domain(given) == _bare_trust_domain(found.value)
            if name == "trust_domain"
            else given == found.value
        )
        if not same:
            problems.append(
                f"{name}: {str(given)[:_ECHO_LIMIT]!r} disagrees with {found.value!r} in "
                f"{spire_config.origin(found)}; the daemon must act on what SPIRE uses: "
                f"remove {name} from the daemon's settings (SPIRE's is used), or fix one of "
                "the two"
            )

    take("trust_domain", spire_config.trust_domain)
    take("region", spire_config.region)
    if _given(explicit, data, "spire_health_url") is None and spire_config.health_url:
        layer["spire_health_url"] = spire_config.health_url.value
        origins["spire_health_url"] = spire_config.origin(spire_config.health_url)

    theirs = [
        (name, found)
        for name, found in (
            ("key_identifier_file", spire_config.key_identifier_file),
            ("key_identifier_value", spire_config.key_identifier_value),
        )
        if found is not None
    ]
    ours = [(n, v) for n in _IDENTIFIERS if (v := _given(explicit, data, n)) is not None]
    if ours and len(theirs) == 2:
        problems.append(
            f"{_IDENTIFIER_LOC}: SPIRE's server.conf {spire_config.path} sets both; SPIRE does "
            f"not start with that ({_BOTH_IDENTIFIERS})"
        )
    elif ours and theirs:
        origin = spire_config.origin(theirs[0][1])
        for our in ours:
            problem = _identifier_disagreement(our, theirs[0], origin)
            if problem is not None:
                problems.append(problem)
    elif not ours:
        found_file = spire_config.key_identifier_file
        if found_file is not None and not Path(found_file.value).is_absolute():
            problems.append(
                f"key_identifier_file: {found_file.value!r} in spire_server_config "
                f"{spire_config.path} line {found_file.line} is relative to spire-server's "
                "working directory, which the daemon cannot know; set key_identifier_file (or "
                f"{ENV_PREFIX}KEY_IDENTIFIER_FILE) to the file's absolute path"
            )
        for name, found in theirs:
            layer[name] = found.value
            origins[name] = spire_config.origin(found)
        if len(theirs) == 2:
            origins[_IDENTIFIER_LOC] = f"spire_server_config {spire_config.path}"
    return layer, origins, problems


def settings_warnings(settings: Settings) -> list[str]:
    """Settings that work but are probably a mistake (``check`` and the start-up log say so)."""
    warnings = []
    for name, interval in (
        ("refresh.interval", settings.refresh.interval),
        ("refresh.alias_scan_interval", settings.refresh.alias_scan_interval),
        ("reclaim.interval", settings.reclaim.interval),
    ):
        if interval < SHORT_INTERVAL:
            warnings.append(
                f"{name} is {format_duration(interval)}, under {format_duration(SHORT_INTERVAL)}: "
                "every run spends AWS quota the SPIRE servers share (SPIRE's own cadence is 6h)"
            )
    if settings.assume_spire_alive:
        warnings.append(
            "assume_spire_alive is true: keys are stamped without asking SPIRE, so a dead "
            "server's keys are kept alive for as long as this daemon runs"
        )
    return warnings


def liveness_problem(settings: Settings) -> str | None:
    """Why ``run`` and a refresh cannot start: nothing says how to tell that SPIRE is alive."""
    if settings.spire_health_url is not None or settings.assume_spire_alive:
        return None
    hint = (
        "enable SPIRE's health listener (health_checks { listener_enabled = true } in "
        "server.conf, read through spire_server_config)"
        if settings.spire_server_config is not None
        else "set spire_server_config to SPIRE's server.conf with its health listener enabled"
    )
    return (
        "the refresh job stamps keys only for a live SPIRE server, and nothing says how to tell: "
        f"set spire_health_url (e.g. http://localhost:8080/live, {ENV_PREFIX}SPIRE_HEALTH_URL), "
        f"or {hint}; or, where no health endpoint can be reached, assume_spire_alive = true "
        "(unsafe: a dead server's keys would then be kept alive)"
    )


def load_settings(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    required_file: bool = False,
) -> Settings:
    """Load settings: environment over the TOML file at ``path`` over SPIRE's server.conf
    (``spire_server_config``, for the values SPIRE and the daemon share) over defaults.

    ``path`` None or a missing file means environment and defaults only, unless
    ``required_file``. ``env`` None reads ``os.environ``. Every problem is raised at once as a
    :class:`SettingsError`.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        if path.exists():
            data = _read_toml(path)
        elif required_file:
            raise SettingsError(f"config file {path} does not exist")

    problems = _unknown_env_problems(environ)
    origins: dict[str, str] = {}
    try:
        env_source = _MappingEnvSettingsSource(Settings, environ)
        try:
            spire_data, origins, spire_problems = _spire_layer(env_source(), data)
        except SettingsError as exc:
            raise SettingsError([*problems, *exc.problems]) from None
        problems += spire_problems
        sources: tuple[PydanticBaseSettingsSource, ...] = (
            env_source,
            _FileSettingsSource(Settings, data),
            _FileSettingsSource(Settings, spire_data),
            DefaultSettingsSource(Settings),
        )
        # mypy sees pydantic's field-derived __init__, not BaseSettings' source parameters.
        settings = Settings(_build_sources=(sources, {}))  # type: ignore[call-arg]
    except _PydanticSettingsError as exc:
        # Raised for a variable naming a whole table whose value is not a JSON object.
        match = re.search(r'field "(\w+)"', str(exc))
        if match is None:  # pragma: no cover - pydantic-settings always names the field
            raise SettingsError([*problems, f"environment: {exc}"]) from None
        table = match[1]
        raise SettingsError(
            [
                *problems,
                f"{_env_name((table,))}: not a JSON object for the [{table}] table (set one "
                f"setting with {_env_name((table, 'NAME'))} instead)",
            ]
        ) from None
    except ValidationError as exc:
        env_keys = frozenset(name.lower() for name in environ)
        problems += [_problem(error, env_keys, origins) for error in exc.errors()]
        raise SettingsError(problems) from None
    if problems:
        raise SettingsError(problems)
    return settings
