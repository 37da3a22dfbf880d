"""What the daemon takes from SPIRE's server.conf: values that know where they came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class SpireConfigError(Exception):
    """SPIRE's configuration cannot be read or lacks what the daemon needs.

    ``str()`` reads ``spire_server_config <path>: line <n>, column <c>: <what>``.
    """

    def __init__(self, path: Path | str, message: str, line: int = 0, column: int = 0) -> None:
        self.path = Path(path)
        self.message = message
        self.line = line
        self.column = column
        where = (
            f"line {line}, column {column}: "
            if line and column
            else (f"line {line}: " if line else "")
        )
        super().__init__(f"spire_server_config {self.path}: {where}{message}")


@dataclass(frozen=True, slots=True)
class SpireValue:
    """A string read from SPIRE's configuration, and where (``file``: a plugin_data_file)."""

    value: str
    line: int
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class SpireServerConfig:
    """The values the daemon shares with SPIRE's server configuration."""

    path: Path
    trust_domain: SpireValue | None = None
    region: SpireValue | None = None
    key_identifier_file: SpireValue | None = None
    key_identifier_value: SpireValue | None = None
    tag_based_key_discovery: bool | None = None
    #: The live check of SPIRE's health listener, when ``health_checks`` enables it.
    health_url: SpireValue | None = None

    def origin(self, value: SpireValue) -> str:
        """``spire_server_config /path line 12``, for messages."""
        if value.file is not None:
            return f"plugin_data_file {value.file} line {value.line} (from {self.path})"
        return f"spire_server_config {self.path} line {value.line}"
