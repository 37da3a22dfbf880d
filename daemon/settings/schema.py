"""The whole settings model and its cross-section checks."""

from __future__ import annotations

import re
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Self

from pydantic import (
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from daemon.durations import Duration, format_duration, try_duration
from daemon.settings.checks import (
    _ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    STALE_AFTER_FLOOR,
    _cross_error,
    _none_if_empty,
    _raw,
    _unset,
    _validate_with_cross_checks,
    duration_within,
    matches,
)
from daemon.settings.sections import (
    AwsSettings,
    JobSections,
    LogSettings,
    MetricsSettings,
    ReclaimSettings,
    RefreshSettings,
    _field_default,
)
from daemon.spire import (
    ContractError,
    parse_trust_domain,
    validate_server_id_value,
)

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


#: The sources of the Settings being built by :meth:`Settings.from_sources`, if any.
_SOURCES: ContextVar[tuple[PydanticBaseSettingsSource, ...] | None] = ContextVar(
    "settings_sources", default=None
)


class Settings(BaseSettings, JobSections):
    """Everything the daemon is configured with. Build it with :func:`load_settings`.

    Constructed directly (``Settings(trust_domain=...)``), keyword arguments beat the process
    environment; :func:`load_settings` gives the environment precedence over the file.
    """

    @classmethod
    def from_sources(cls, sources: tuple[PydanticBaseSettingsSource, ...]) -> Self:
        """Build from exactly these sources, highest precedence first (what
        :func:`load_settings` does), through pydantic-settings' public hook."""
        token = _SOURCES.set(sources)
        try:
            return cls()  # type: ignore[call-arg]  # the fields come from the sources
        finally:
            _SOURCES.reset(token)

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
        # load_settings's own sources (environment, file, SPIRE's server.conf, defaults), or
        # else no .env or secrets directory: keyword arguments and the environment.
        sources = _SOURCES.get()
        if sources is not None:
            return sources
        return init_settings, env_settings

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        try:
            return parse_trust_domain(value)
        except ContractError as exc:
            raise ValueError(str(exc)) from None

    _spire_health_url = matches(
        "spire_health_url",
        _HEALTH_URL_RE,
        "must be an http:// or https:// URL with a host, e.g. http://localhost:8080/live",
    )
    _spire_health_timeout = duration_within("spire_health_timeout", _HEALTH_TIMEOUT_CEILING)
    _region = matches(
        "region",
        _REGION_RE,
        "must be an AWS region name like us-east-1 (or unset to use the AWS configuration)",
    )

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
