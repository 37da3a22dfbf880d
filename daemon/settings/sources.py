"""Where values come from: the environment (a given mapping), the TOML file."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from daemon.files import FileProblem, read_text
from daemon.settings.checks import SettingsError

# --- loading ------------------------------------------------------------------------------------


def mapping_env_source(
    settings_cls: type[BaseSettings], environ: Mapping[str, str]
) -> EnvSettingsSource:
    """The environment source, reading ``environ`` instead of ``os.environ``: its variables
    are replaced through the source's public ``env_vars``, parsed as the source parses them."""
    source = EnvSettingsSource(settings_cls)
    source.env_vars = parse_env_vars(
        environ, source.case_sensitive, source.env_ignore_empty, source.env_parse_none_str
    )
    return source


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
        text = read_text(path)
    except FileProblem as exc:
        raise SettingsError(f"config file {path}: {exc}") from None
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
