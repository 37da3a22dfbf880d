"""Durations in settings: ``90s``, ``15m``, ``6h``, ``14d``, ``1h30m``."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = [
    "DURATION_HINT",
    "MAX_DURATION",
    "Duration",
    "format_duration",
    "parse_duration",
    "try_duration",
]

_UNIT_MICROSECONDS: dict[str, int] = {
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
}
_UNIT_ORDER = tuple(_UNIT_MICROSECONDS)
# "ms" comes before "m" so that "5ms" is not read as 5 minutes followed by garbage.
_DURATION_RE = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|d|h|m|s))+")
_COMPONENT_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|d|h|m|s)")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
DURATION_HINT = "a number with a unit d, h, m, s or ms, e.g. 90s, 15m, 6h, 14d, 1h30m"


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """Parse ``90s``, ``15m``, ``6h``, ``14d``, compounds like ``1h30m``, or seconds as a bare
    number (``90``, ``"90"``, ``1.5``).

    Units appear once each, largest first. Negative, empty and malformed values raise ValueError.
    """
    if isinstance(value, bool):  # bool is an int subclass: True is not "1 second"
        raise ValueError(f"expected a duration ({DURATION_HINT}), got a boolean")
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"must not be negative, got {format_duration(value)}")
        if value > MAX_DURATION:
            raise ValueError(f"must be at most {format_duration(MAX_DURATION)}")
        return value
    if isinstance(value, int | float):
        return _seconds_to_timedelta(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration ({DURATION_HINT}), got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError(f"must not be empty (expected {DURATION_HINT})")
    if text.startswith("-"):
        raise ValueError(f"must not be negative, got {value!r}")
    if _NUMBER_RE.fullmatch(text):
        # A bare number is seconds, written as a TOML number or as text (an environment
        # variable is always text): "90" and 90 mean the same.
        return _seconds_to_timedelta(float(text) if "." in text else int(text))
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(f"invalid duration {value!r} (expected {DURATION_HINT})")
    total = Decimal(0)
    previous = -1
    for number, unit in _COMPONENT_RE.findall(text):
        rank = _UNIT_ORDER.index(unit)
        if rank <= previous:
            raise ValueError(
                f"invalid duration {value!r}: units must appear once each, largest first "
                "(e.g. 1h30m)"
            )
        previous = rank
        total += Decimal(number) * _UNIT_MICROSECONDS[unit]
    return _microseconds_to_timedelta(total, value)


def _seconds_to_timedelta(seconds: int | float) -> timedelta:
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise ValueError(f"must be a finite number of seconds, got {seconds!r}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {seconds!r}")
    try:
        micro = Decimal(seconds) * _UNIT_MICROSECONDS["s"]
    except InvalidOperation:  # pragma: no cover - finite ints and floats always convert
        raise ValueError(f"invalid duration {seconds!r}") from None
    return _microseconds_to_timedelta(micro, seconds)


#: The longest duration a setting may hold: about ten years. Longer ones mean nothing here and
#: would overflow the date arithmetic of schedules.
MAX_DURATION = timedelta(days=3660)


def _microseconds_to_timedelta(micro: Decimal, original: object) -> timedelta:
    if micro > Decimal(MAX_DURATION // timedelta(microseconds=1)):
        raise ValueError(
            f"duration {original!r} is too large (at most {format_duration(MAX_DURATION)})"
        )
    return timedelta(microseconds=int(micro.to_integral_value()))


def format_duration(td: timedelta) -> str:
    """Render a duration the way :func:`parse_duration` reads it: ``6h``, ``14d``, ``1h30m``."""
    micro = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    if micro == 0:
        return "0s"
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    parts: list[str] = []
    for unit in ("d", "h", "m"):
        count, micro = divmod(micro, _UNIT_MICROSECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    seconds, micro = divmod(micro, _UNIT_MICROSECONDS["s"])
    if micro % 1_000:
        fraction = f"{micro:06d}".rstrip("0")
        parts.append(f"{seconds}.{fraction}s")
    else:
        if seconds:
            parts.append(f"{seconds}s")
        if micro:
            parts.append(f"{micro // 1_000}ms")
    return sign + "".join(parts)


def _duration_before(value: object) -> object:
    if isinstance(value, str | int | float | timedelta):
        return parse_duration(value)
    raise ValueError(f"expected a duration ({DURATION_HINT}), got {type(value).__name__}")


def _duration_json(td: timedelta) -> str:
    return format_duration(td)


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration_before),
    PlainSerializer(_duration_json, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(\d+(\.\d*)?(d|h|m|s|ms))+$",
            "examples": ["90s", "15m", "6h", "14d", "1h30m"],
        }
    ),
]
"""A :class:`~datetime.timedelta` read by :func:`parse_duration`, shown as ``6h`` in JSON."""


def try_duration(value: object) -> timedelta | None:
    """Best-effort parse for cross-field checks; a bad value is already reported on its own."""
    try:
        parsed = _duration_before(value)
    except (ValueError, TypeError):
        return None
    return parsed if isinstance(parsed, timedelta) else None
