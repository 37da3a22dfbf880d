"""The sections of server.conf the daemon reads: server, health_checks, the first plugins section
and its KeyManager "aws_kms" plugin_data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from daemon import hcl
from daemon.hcl import HclError, ListNode, Node, ObjectList, ObjectNode
from daemon.spire_config.decoder import _Decoder, _line
from daemon.spire_config.values import SpireValue

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
