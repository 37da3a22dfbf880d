"""HCL1's decoding into Go values, as SPIRE's server decodes its configuration: case-insensitive
names, the last value wins, repeated blocks merge, a string field takes a string, a heredoc or a
number."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from daemon import hcl
from daemon.hcl import HclError, Item, ListNode, Literal, Node, ObjectList, ObjectNode
from daemon.spire_config.values import SpireConfigError, SpireValue

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
