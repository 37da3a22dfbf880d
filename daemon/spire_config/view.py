"""The entry points: server.conf read (and expanded) as SPIRE reads it, and the view that the
settings take of it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon import hcl
from daemon.files import FileProblem, read_text
from daemon.hcl import HclError, ObjectList
from daemon.spire_config.decoder import _Decoder, _line
from daemon.spire_config.sections import (
    _aws_kms_data,
    _AwsKms,
    _decode_root,
    _Health,
    _Plugin,
    _plugins,
    plugin_names,
)
from daemon.spire_config.values import SpireConfigError, SpireServerConfig, SpireValue


def health_live_url(bind_address: str, bind_port: str, live_path: str) -> str:
    """The URL of SPIRE's live check, from ``health_checks`` (SPIRE's defaults filled in).

    SPIRE listens on ``localhost:80`` and serves ``/live`` unless told otherwise. A wildcard
    listen address (``0.0.0.0``, ``::``) is reached on the loopback address.
    """
    host = bind_address.strip("[]") or "localhost"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - mapped away
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{bind_port or '80'}{live_path or '/live'}"


def _health_url(path: Path, health: _Health) -> SpireValue | None:
    if not health.listener_enabled:
        return None
    where = "health_checks."
    port, live = health.bind_port, health.live_path
    if port is not None and port.value and not (port.value.isascii() and port.value.isdigit()):
        raise SpireConfigError(
            path, f"{where}bind_port {port.value!r} is not a port number", port.line
        )
    if live is not None and live.value and not live.value.startswith("/"):
        raise SpireConfigError(
            path, f"{where}live_path {live.value!r} must start with /", live.line
        )
    url = health_live_url(
        health.bind_address.value if health.bind_address else "",
        port.value if port else "",
        live.value if live else "",
    )
    return SpireValue(url, health.line)


def _unset(value: SpireValue | None) -> SpireValue | None:
    """SPIRE reads an empty string as unset."""
    return value if value is not None and value.value != "" else None


def _no_variables(path: Path, value: SpireValue | None, name: str, expand: bool) -> None:
    if value is None or expand or "$" not in value.value:
        return
    raise SpireConfigError(
        path,
        f"{name} {value.value!r} refers to an environment variable, which SPIRE expands only "
        "when spire-server runs with -expandEnv: if it does, set "
        "spire_server_config_expand_env = true (the daemon then expands it from its own "
        f"environment); if not, SPIRE uses {value.value!r} as written",
        value.line,
    )


@dataclass(frozen=True, slots=True)
class SpireView:
    """What SPIRE's loader makes of a configuration text, before the daemon's own rules: the
    same fields the HCL oracle of tests/test_hcl_oracle.py prints."""

    server: bool
    trust_domain: SpireValue | None
    health: _Health
    plugins: tuple[tuple[str, str], ...]
    #: None: no ``KeyManager "aws_kms"`` plugin at all
    key_manager: _Plugin | None
    data: _AwsKms | None
    has_data: bool = False


def decode_spire_server_config(
    text: str,
    path: Path,
    *,
    expand_env: bool = False,
    environ: Mapping[str, str] | None = None,
) -> SpireView:
    """Decode a server configuration's text as SPIRE's loader does; raise
    :class:`SpireConfigError` where it fails (SPIRE then does not start)."""
    if expand_env:
        text = hcl.expand_env(text, os.environ if environ is None else environ)
    try:
        root = hcl.parse(text, path)
    except HclError as exc:
        raise SpireConfigError(
            path, f"{exc.message} (SPIRE does not start)", exc.line, exc.column
        ) from None
    decoder = _Decoder(path)
    found = _decode_root(decoder, root)
    if found.plugins is None:
        return SpireView(found.server, found.trust_domain, found.health, (), None, None)
    if not isinstance(found.plugins, ObjectList):
        raise decoder.fail(
            "the plugins section must be a block (SPIRE does not start)", _line(found.plugins)
        )
    names = tuple((kind, name) for kind, name, _ in plugin_names(found.plugins))
    manager = _plugins(decoder, found.plugins)
    if manager is None:
        return SpireView(found.server, found.trust_domain, found.health, names, None, None)
    if manager.data is not None and manager.data_file is not None:
        raise SpireConfigError(
            path,
            'KeyManager "aws_kms" sets both plugin_data and plugin_data_file; SPIRE does not start',
            manager.data_file.line,
        )
    original: ObjectList | None = None
    data_decoder = decoder
    if manager.data_file is not None:
        data_path = Path(manager.data_file.value)
        if not data_path.is_absolute():
            raise SpireConfigError(
                path,
                f'KeyManager "aws_kms" plugin_data_file {manager.data_file.value!r} is relative '
                "to spire-server's working directory, which the daemon cannot know: make it "
                "absolute, or set region and key_identifier_file (or key_identifier_value) in "
                "the daemon's settings",
                manager.data_file.line,
            )
        try:
            data_text = read_text(data_path, lenient=True)
        except FileProblem as exc:
            raise SpireConfigError(
                path,
                f'KeyManager "aws_kms" plugin_data_file {data_path}: {exc}',
                manager.data_file.line,
            ) from None
        data_decoder = _Decoder(path, data_path)
    elif manager.data is not None:
        original = manager.data if isinstance(manager.data, ObjectList) else None
        data_text = hcl.render(manager.data)
    else:
        data_text = ""
    data = _aws_kms_data(data_decoder, data_text, original)
    return SpireView(
        found.server, found.trust_domain, found.health, names, manager, data, data_text != ""
    )


def read_spire_server_config(
    path: Path,
    *,
    expand_env: bool = False,
    environ: Mapping[str, str] | None = None,
) -> SpireServerConfig:
    """Read ``server.trust_domain``, ``health_checks`` and the ``aws_kms`` KeyManager's settings
    from SPIRE's file, as SPIRE reads them.

    ``expand_env`` expands ``$VAR`` and ``${VAR}`` from ``environ`` (default ``os.environ``)
    first, as ``spire-server run -expandEnv`` does. Raise :class:`SpireConfigError` when the
    file cannot be read or parsed, when SPIRE would not start with it, or when it holds no
    enabled ``KeyManager "aws_kms"`` (this server then keeps no keys in AWS KMS).
    """
    try:
        text = read_text(path, lenient=True)
    except FileProblem as exc:
        raise SpireConfigError(path, str(exc)) from None
    view = decode_spire_server_config(text, path, expand_env=expand_env, environ=environ)
    trust_domain = _unset(view.trust_domain)
    _no_variables(path, trust_domain, "server.trust_domain", expand_env)
    health = _health_url(path, view.health)
    manager = view.key_manager
    if manager is None or manager.enabled is False or view.data is None:
        raise SpireConfigError(
            path,
            'no enabled KeyManager "aws_kms" in the plugins section: this SPIRE server does not '
            "keep its keys in AWS KMS",
        )
    data = view.data
    region = _unset(data.region)
    file = _unset(data.key_identifier_file)
    value = _unset(data.key_identifier_value)
    for name, found_value in (
        ("region", region),
        ("key_identifier_file", file),
        ("key_identifier_value", value),
    ):
        _no_variables(path, found_value, f'KeyManager "aws_kms" plugin_data: {name}', expand_env)
    return SpireServerConfig(path, trust_domain, region, file, value, data.discovery, health)
