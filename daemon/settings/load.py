"""Loading: SPIRE's server.conf layer, the environment over the file, warnings."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    TypeAdapter,
    ValidationError,
)
from pydantic_settings import (
    PydanticBaseSettingsSource,
)
from pydantic_settings import SettingsError as _PydanticSettingsError
from pydantic_settings.sources import DefaultSettingsSource

from daemon.durations import format_duration
from daemon.settings.checks import ENV_PREFIX, SHORT_INTERVAL, SettingsError, _unset
from daemon.settings.messages import (
    _ECHO_LIMIT,
    _IDENTIFIERS,
    _env_name,
    _problem,
    _unknown_env_problems,
)
from daemon.settings.schema import _BOTH_IDENTIFIERS, _IDENTIFIER_LOC, Settings
from daemon.settings.sources import _FileSettingsSource, _read_toml, mapping_env_source
from daemon.spire import (
    ContractError,
    parse_trust_domain,
    read_server_id_file,
)
from daemon.spire_config import SpireConfigError, SpireValue, read_spire_server_config


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
        env_source = mapping_env_source(Settings, environ)
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
        settings = Settings.from_sources(sources)
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
