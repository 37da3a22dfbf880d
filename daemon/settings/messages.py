"""Validation errors as the lines a person reads: dotted.name: what is wrong."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from pydantic import (
    BaseModel,
)
from pydantic_core import ErrorDetails

from daemon.durations import format_duration
from daemon.settings.checks import _CROSS_ERROR_TYPE, _ENV_NESTED_DELIMITER, ENV_PREFIX
from daemon.settings.schema import Settings


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
