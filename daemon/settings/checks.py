"""Constants, the error type, and the field and cross-field checks the sections use."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from daemon.durations import format_duration

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


def rule(*fields: str, holds: Callable[[Any], bool], otherwise: str) -> Any:
    """A field validator for ``fields``: a value for which ``holds`` is false is refused with the
    message ``otherwise``. None (an optional field left unset) always passes."""

    def check(value: Any) -> Any:
        if value is not None and not holds(value):
            raise ValueError(otherwise)
        return value

    return field_validator(*fields)(check)


def positive_durations(*fields: str) -> Any:
    """Durations that must be above 0."""
    return rule(
        *fields, holds=lambda td: td > timedelta(0), otherwise="must be greater than 0 (e.g. 6h)"
    )


#: The shortest interval a job may have; below SHORT_INTERVAL, check and the start warn.
MIN_INTERVAL = timedelta(seconds=1)
SHORT_INTERVAL = timedelta(minutes=5)


def job_intervals(*fields: str) -> Any:
    """Job intervals: at least :data:`MIN_INTERVAL`."""
    return rule(
        *fields,
        holds=lambda td: td >= MIN_INTERVAL,
        otherwise=f"must be at least {format_duration(MIN_INTERVAL)} (SPIRE's own cadence is 6h)",
    )


def jitter_fraction(*fields: str) -> Any:
    """Jitter fractions: 0 to :data:`_JITTER_CEILING`."""
    return rule(
        *fields,
        holds=lambda value: 0 <= value <= _JITTER_CEILING,
        otherwise=f"must be between 0 and {_JITTER_CEILING} (a fraction of the interval)",
    )


def matches(field: str, pattern: str | re.Pattern[str], otherwise: str) -> Any:
    """A text field that must match ``pattern`` whole."""
    return rule(
        field, holds=lambda value: re.fullmatch(pattern, value) is not None, otherwise=otherwise
    )


def duration_within(field: str, ceiling: timedelta) -> Any:
    """A duration above 0 and at most ``ceiling``."""
    return rule(
        field,
        holds=lambda td: timedelta(0) < td <= ceiling,
        otherwise=f"must be above 0 and at most {format_duration(ceiling)}",
    )


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
