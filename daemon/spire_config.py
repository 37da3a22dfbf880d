"""Read what the daemon can reuse from SPIRE's own server configuration, exactly as SPIRE reads it.

SPIRE's ``server.conf`` is HCL1, or its JSON form (SPIRE's Helm chart renders JSON); it is parsed
by :mod:`daemon.hcl` and decoded here the way SPIRE's server loads it:

* the whole text, with ``$VAR`` and ``${VAR}`` expanded first when ``expand_env`` is set
  (``spire-server run -expandEnv``), is decoded into the sections the daemon reads:
  ``server.trust_domain`` and ``health_checks``, with HCL1's matching (case-insensitive names,
  several matches decoded in order: the last value wins, repeated blocks merge) and its types
  (a string field takes a string, a heredoc or a number, nothing else);
* of the ``plugins`` sections, the first one counts (a later one must be a block too); each
  plugin is named by the first two keys on its path (``KeyManager "aws_kms" {...}``,
  ``KeyManager { aws_kms {...} }`` or ``KeyManager "aws_kms" plugin_data {...}``), a plugin
  named twice is an error, and
  ``KeyManager`` ``aws_kms`` is found by its exact names;
* its ``plugin_data`` is printed back to HCL text and decoded again, as SPIRE hands it to the
  plugin (or the file ``plugin_data_file`` names is read); ``region``, ``key_identifier_file``
  and ``key_identifier_value`` are taken from it.

:func:`read_spire_server_config` returns those values, each with the file and line it came from.
It never returns ``access_key_id``/``secret_access_key``: the daemon takes credentials from the
AWS chain only. Fields of SPIRE's configuration that the daemon does not read are not checked:
SPIRE reports their errors itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon import hcl
from daemon.hcl import HclError, Item, ListNode, Literal, Node, ObjectList, ObjectNode

__all__ = [
    "SpireConfigError",
    "SpireServerConfig",
    "SpireValue",
    "SpireView",
    "decode_spire_server_config",
    "health_live_url",
    "plugin_names",
    "read_spire_server_config",
]


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


# --- decoding -------------------------------------------------------------------------------------


def _line(node: Node | Item | None) -> int:
    if isinstance(node, Literal):
        return node.token.line
    if isinstance(node, ObjectNode | ListNode):
        return node.line
    if isinstance(node, Item):
        return node.line
    if isinstance(node, ObjectList) and node.items:
        return node.items[0].line
    return 0


def _items(node: Node) -> list[Item] | None:
    if isinstance(node, ObjectNode):
        return node.body.items
    if isinstance(node, ObjectList):
        return node.items
    return None


class _Decoder:
    """HCL1's decoding into the few shapes SPIRE's structures have, failing where it fails."""

    def __init__(self, path: Path, file: Path | None = None) -> None:
        self.path = path
        self.file = file  # values read from a plugin_data_file

    def fail(self, message: str, line: int = 0) -> SpireConfigError:
        where = f"plugin_data_file {self.file}: " if self.file is not None else ""
        return SpireConfigError(self.path, where + message, line)

    def struct(self, node: Node, where: str, fields: Mapping[str, Callable[[Node], None]]) -> None:
        """Decode ``node`` into fields: each gets the items its name matches, ignoring case;
        items with more keys first (as one list), then each direct match in order."""
        items = _items(node)
        if items is None:
            raise self.fail(f"{where} must be a block (SPIRE does not start)", _line(node))
        for name, take in fields.items():
            matched = hcl.filter_items(items, name)
            nested = [m for m in matched if m.keys]
            if nested:
                take(ObjectList(nested))
            for match in matched:
                if match.keys or match.value is None:
                    continue
                value = match.value
                take(value.body if isinstance(value, ObjectNode) else value)

    def node(self, kept: Node | None, node: Node, where: str) -> Node:
        """An ``ast.Node`` field, which SPIRE keeps as it is: the library sets it on the first
        match and decodes each later one into the node already there, as into a struct. A
        later match that is not a block fails; one that names a field of that node (``items``
        of a block, for instance) would change it, which the daemon does not follow."""
        if kept is None:
            return node
        items = _items(node)
        if items is None:
            raise self.fail(
                f"{where} is given again as something else than a block (SPIRE does not start)",
                _line(node),
            )
        inner = {"Items"} if isinstance(kept, ObjectList) else {"List", "Lbrack", "Rbrack"}
        if isinstance(kept, Literal):
            inner = {"Token", "LeadComment", "LineComment"}
        for item in items:
            if item.keys and any(hcl.fold_equal(item.keys[0].string(), f) for f in inner):
                raise self.fail(
                    f"{where} is given again with a key {item.keys[0].text}, which SPIRE would "
                    "decode into the first one's syntax tree; the daemon does not follow that",
                    item.line,
                )
        return kept

    def string(self, node: Node, where: str) -> SpireValue:
        if isinstance(node, Literal):
            token = node.token
            if token.kind == "NUMBER":
                return SpireValue(token.text, token.line, self.file)
            if token.kind in ("STRING", "HEREDOC"):
                try:
                    return SpireValue(token.string(), token.line, self.file)
                except HclError as exc:
                    raise self.fail(f"{where}: {exc.message}", token.line) from None
        raise self.fail(f"{where} must be a string (SPIRE does not start)", _line(node))

    def boolean(self, node: Node, where: str) -> bool:
        if isinstance(node, Literal) and node.token.kind == "BOOL":
            return node.token.text == "true"
        raise self.fail(f"{where} must be true or false (SPIRE does not start)", _line(node))

    def strings(self, node: Node, where: str) -> None:
        """A list of strings, checked for its type only."""
        if isinstance(node, ListNode):
            elements: list[Node] = node.items
        elif isinstance(node, ObjectNode):
            elements = [node]
        elif isinstance(node, ObjectList):
            elements = [ObjectList([i]) for i in node.items]
        else:
            raise self.fail(
                f"{where} must be a list of strings (SPIRE does not start)", _line(node)
            )
        for element in elements:
            self.string(element, where)

    def mapping(
        self,
        node: Node | Item,
        where: str,
        value: Callable[[Node, Any, str], Any],
        result: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A map keyed by each item's first key (exactly as written); an item with more keys
        gathers, under that key, every item whose first key matches it."""
        if isinstance(node, Item):
            items: list[Item] | None = [node]
        else:
            items = _items(node)
        if items is None:
            raise self.fail(f"{where} must be a block (SPIRE does not start)", _line(node))
        result = {} if result is None else result
        done: set[str] = set()
        for item in items:
            if item.value is None:
                continue
            if not item.keys:
                raise self.fail(f"{where}: a map must have string keys", _line(item))
            key = item.keys[0].string()
            if key in done:
                continue
            inner: Node = item.value
            if len(item.keys) > 1:
                inner = ObjectList(hcl.filter_items(items, key))
                done.add(key)
            result[key] = value(inner, result.get(key), f"{where}.{key}")
        return result


# --- SPIRE's sections -----------------------------------------------------------------------------


@dataclass
class _Health:
    listener_enabled: bool = False
    bind_address: SpireValue | None = None
    bind_port: SpireValue | None = None
    ready_path: SpireValue | None = None
    live_path: SpireValue | None = None
    line: int = 0


@dataclass
class _Plugin:
    """What SPIRE's catalog decodes of each plugin (its types are checked as SPIRE checks them)."""

    data: Node | None = None
    data_file: SpireValue | None = None
    enabled: bool | None = None
    line: int = 0


@dataclass
class _Root:
    server: bool = False
    trust_domain: SpireValue | None = None
    plugins: Node | None = None
    health: _Health = field(default_factory=_Health)


def _decode_root(decoder: _Decoder, root: ObjectList) -> _Root:
    out = _Root()

    def trust_domain(node: Node) -> None:
        out.trust_domain = decoder.string(node, "server.trust_domain")

    def server(node: Node) -> None:
        out.server = True
        decoder.struct(node, "server", {"trust_domain": trust_domain})

    def plugins(node: Node) -> None:
        out.plugins = decoder.node(out.plugins, node, "plugins")

    health = out.health

    def health_field(name: str) -> Callable[[Node], None]:
        def take(node: Node) -> None:
            if name == "listener_enabled":
                health.listener_enabled = decoder.boolean(node, f"health_checks.{name}")
                health.line = _line(node)
            else:
                setattr(health, name, decoder.string(node, f"health_checks.{name}"))

        return take

    def health_checks(node: Node) -> None:
        decoder.struct(
            node,
            "health_checks",
            {
                name: health_field(name)
                for name in (
                    "listener_enabled",
                    "bind_address",
                    "bind_port",
                    "ready_path",
                    "live_path",
                )
            },
        )

    decoder.struct(
        root,
        "the configuration",
        {"server": server, "plugins": plugins, "health_checks": health_checks},
    )
    return out


def plugin_names(node: ObjectList) -> list[tuple[str, str, int]]:
    """Each plugin of a plugins section, named by the first two keys on its path, with its line,
    in order. SPIRE does not look inside a plugin once it is named."""
    found: list[tuple[str, str, int]] = []

    def walk(current: Node | None, path: list[str]) -> None:
        if isinstance(current, ObjectList):
            for item in current.items:
                keys = path + [k.string() for k in item.keys]
                if len(keys) >= 2:
                    found.append((keys[0], keys[1], item.line))
                else:
                    walk(item.value, keys)
        elif isinstance(current, ObjectNode):
            walk(current.body, path)
        elif isinstance(current, ListNode):
            for element in current.items:
                walk(element, path)

    walk(node, [])
    return found


def _plugins(decoder: _Decoder, node: ObjectList) -> _Plugin | None:
    """The ``KeyManager "aws_kms"`` plugin, decoded as SPIRE's catalog decodes every plugin."""
    seen: dict[tuple[str, str], int] = {}
    for kind, name, line in plugin_names(node):
        if (kind, name) in seen:
            raise decoder.fail(
                f'plugin "{kind}" "{name}" is declared more than once (lines {seen[kind, name]} '
                f"and {line}); SPIRE does not start",
                line,
            )
        seen[kind, name] = line

    def plugin(inner: Node, existing: _Plugin | None, where: str) -> _Plugin:
        record = _Plugin() if existing is None else existing
        record.line = record.line or _line(inner)

        def data(value: Node) -> None:
            record.data = decoder.node(record.data, value, f"{where}.plugin_data")

        def data_file(value: Node) -> None:
            record.data_file = decoder.string(value, f"{where}.plugin_data_file")

        def enabled(value: Node) -> None:
            record.enabled = decoder.boolean(value, f"{where}.enabled")

        def checked(name: str) -> Callable[[Node], None]:
            def check(value: Node) -> None:
                decoder.string(value, f"{where}.{name}")

            return check

        decoder.struct(
            inner,
            where,
            {
                "plugin_cmd": checked("plugin_cmd"),
                "plugin_args": lambda v: decoder.strings(v, f"{where}.plugin_args"),
                "plugin_checksum": checked("plugin_checksum"),
                "plugin_data": data,
                "plugin_data_file": data_file,
                "enabled": enabled,
            },
        )
        return record

    def by_name(inner: Node, existing: dict[str, _Plugin] | None, where: str) -> dict[str, _Plugin]:
        return decoder.mapping(inner, where, plugin, existing)

    maps = [decoder.mapping(item, "plugins", by_name) for item in node.items]
    for by_type in maps:
        found = by_type.get("KeyManager", {}).get("aws_kms")
        if found is not None:
            return found  # type: ignore[no-any-return]
    return None


@dataclass
class _AwsKms:
    region: SpireValue | None = None
    key_identifier_file: SpireValue | None = None
    key_identifier_value: SpireValue | None = None
    discovery: bool | None = None


def _aws_kms_data(decoder: _Decoder, text: str, original: ObjectList | None) -> _AwsKms:
    """Decode the plugin's configuration text as the plugin does (its own HCL decode)."""
    where = decoder.file or decoder.path
    try:
        body = hcl.parse(text, where)
    except HclError as exc:
        if original is not None:
            raise decoder.fail(
                'KeyManager "aws_kms" plugin_data cannot be read back as SPIRE hands it to the '
                f"plugin ({exc.message}); SPIRE does not start",
                _line(original),
            ) from None
        raise decoder.fail(exc.message, exc.line) from None
    out = _AwsKms()
    lines = [item.line for item in original.items] if original is not None else None

    def placed(value: SpireValue, node: Node) -> SpireValue:
        """The value's line in the file the operator wrote (plugin_data was printed again)."""
        if lines is None:
            return value
        for index, item in enumerate(body.items):
            if item.value is node and index < len(lines):
                return SpireValue(value.value, lines[index], value.file)
        return SpireValue(value.value, _line(original), value.file)

    def text_field(name: str) -> Callable[[Node], None]:
        def take(node: Node) -> None:
            value = decoder.string(node, f'KeyManager "aws_kms" plugin_data: {name}')
            if hasattr(out, name):
                setattr(out, name, placed(value, node))

        return take

    def discovery(node: Node) -> None:
        out.discovery = decoder.boolean(node, 'KeyManager "aws_kms" enable_tag_based_key_discovery')

    def key_tags(node: Node) -> None:
        decoder.mapping(
            node,
            'KeyManager "aws_kms" key_tags',
            lambda inner, _existing, w: decoder.string(inner, w).value,
        )

    decoder.struct(
        body,
        'KeyManager "aws_kms" plugin_data',
        {
            "access_key_id": text_field("access_key_id"),
            "secret_access_key": text_field("secret_access_key"),
            "region": text_field("region"),
            "key_identifier_file": text_field("key_identifier_file"),
            "key_identifier_value": text_field("key_identifier_value"),
            "key_policy_file": text_field("key_policy_file"),
            "key_tags": key_tags,
            "enable_tag_based_key_discovery": discovery,
        },
    )
    return out


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
            data_text = data_path.read_bytes().decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise SpireConfigError(
                path,
                f'KeyManager "aws_kms" plugin_data_file {data_path}: cannot read it: '
                f"{exc.strerror}",
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
        raw = path.read_bytes()
    except OSError as exc:
        raise SpireConfigError(path, f"cannot read it: {exc.strerror}") from None
    view = decode_spire_server_config(
        raw.decode("utf-8", "surrogateescape"), path, expand_env=expand_env, environ=environ
    )
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
