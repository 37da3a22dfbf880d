"""The library's JSON scanner and parser, and its flattening of nested objects."""

from __future__ import annotations

from collections.abc import Iterator

from daemon.hcl import nodes
from daemon.hcl.nodes import HclError, Token, _End, _Fatal, _Text
from daemon.hcl.scanner import _Parser, _Reader, _Tok
from daemon.hcl.strings import _EOF, _decimal, _digit_value

# --- JSON -----------------------------------------------------------------------------------------

_JSON_PUNCTUATION = {
    "[": "LBRACK",
    "]": "RBRACK",
    "{": "LBRACE",
    "}": "RBRACE",
    ",": "COMMA",
    ":": "COLON",
}


class _JsonScanner(_Reader):
    """The library's JSON tokens (it reads JSON with a scanner of its own)."""

    WORD = "-"

    def word_token(self, text: str, start: int) -> _Tok:
        if text in ("true", "false"):
            return _Tok("BOOL", start, self.i)
        if text == "null":
            return _Tok("NULL", start, self.i)
        raise self.error("illegal char", start)

    def symbol(self, ch: str, start: int) -> _Tok:
        if ch in _JSON_PUNCTUATION:
            return _Tok(_JSON_PUNCTUATION[ch], start, self.i)
        if ch == "-":
            if _decimal(self.peek()):
                return _Tok(self._number(self.next()), start, self._end())
            raise self.error("illegal char", start)
        raise self.error(f"illegal char: {ch}", start)

    def _number(self, ch: str) -> str:
        zero = ch == "0"
        after_first = self.i  # the library compares positions, which move on every read at the end
        kind = self._decimal_number(ch)
        if kind == "NUMBER" and zero and self.i != after_first:
            raise self.error("numbers cannot start with 0")
        return kind

    def _string(self, start: int) -> None:
        braces = 0
        while True:
            ch = self.next()
            if ch in ("\n", _EOF):
                raise self.error("literal not terminated", start)
            if ch == '"':
                return
            braces = self.braces(braces, ch)
            if ch == "\\":
                self._escape()

    def _digits(self, ch: str, base: int, n: int) -> None:
        while n > 0 and _digit_value(ch) < base:
            ch = self.next()
            n -= 1
        if n > 0:
            raise self.error("illegal char escape")
        if ch == _EOF:
            # The library puts the character back unconditionally, and panics when the text
            # ended there.
            raise self.error("literal not terminated")
        self.unread()


class _JsonParser(_Parser):
    """The library's JSON parser: one object, read as far as its tokens continue it."""

    LITERALS = frozenset({"NUMBER", "FLOAT", "BOOL", "NULL", "STRING"})
    UNKNOWN_VALUE = "Expected object value, got unknown token"

    def __init__(self, text: _Text) -> None:
        super().__init__(text)
        self.scanner = _JsonScanner(text)

    def scan(self) -> _Tok:
        self.tok = self.scanner.scan()
        return self.tok

    def token(self, tok: _Tok) -> Token:
        line, column = self.t.where(tok.start)
        if tok.kind == "NULL":
            return Token("STRING", "", line, column)
        text = self.t.s[tok.start : tok.end]
        return Token(tok.kind, text, line, column, json=tok.kind == "STRING")

    def root(self) -> nodes.ObjectList:
        tok = self.scan()
        if tok.kind != "LBRACE":
            raise self.error(f"Expected object, got unknown token: {tok.kind}")
        return self.object().body

    def object(self) -> nodes.ObjectNode:
        line, column = self.t.where(self.tok.start)
        self.deeper()
        items, failure = self.object_list()
        if failure is not None and self.tok.kind != "RBRACE":
            raise failure
        self.depth -= 1
        return nodes.ObjectNode(nodes.ObjectList(items), line, column)

    def object_list(self) -> tuple[list[nodes.Item], HclError | None]:
        items: list[nodes.Item] = []
        while True:
            try:
                item = self.object_item()
            except _End:
                break
            except _Fatal:
                raise
            except HclError as exc:
                return items, exc
            items.append(item)
            if self.scan().kind != "COMMA":
                break
        return items, None

    def object_item(self) -> nodes.Item:
        keys: list[Token] = []
        while True:
            tok = self.scan()
            if tok.kind == "EOF":
                raise _End
            if tok.kind == "STRING":
                keys.append(self.token(tok))
                continue
            if tok.kind == "COLON":
                if not keys:
                    raise self.error("expected: STRING got: COLON")
                break
            raise self.error(f"expected: STRING got: {tok.kind}")
        return nodes.Item(keys, self.value(), assign=True)

    def list(self) -> nodes.ListNode:
        line, column = self.t.where(self.tok.start)
        items: list[nodes.Node] = []
        while True:
            tok = self.scan()
            if tok.kind in ("NUMBER", "FLOAT", "STRING"):
                items.append(nodes.Literal(self.token(tok)))
            elif tok.kind == "LBRACE":
                items.append(self.object())
            elif tok.kind in ("COMMA", "BOOL", "LBRACK"):
                continue  # the library drops booleans and nested lists here
            elif tok.kind == "RBRACK":
                return nodes.ListNode(items, line, column)
            else:
                raise self.error(f"unexpected token while parsing list: {tok.kind}")


def _flatten(body: nodes.ObjectList) -> None:
    """The library's flattening of JSON: an item whose object holds only objects becomes one item
    per member, keys joined (``"a": {"b": {...}}`` reads as ``a b {...}``); an item whose list
    holds only objects, one item per element. Applied to every object list, top down."""
    kept: list[nodes.Item] = []
    frontier = list(body.items)
    while frontier:
        item = frontier.pop()
        value = item.value
        if isinstance(value, nodes.ObjectNode):
            members = value.body.items
            if members and all(isinstance(m.value, nodes.ObjectNode) for m in members):
                frontier += [nodes.Item(item.keys + m.keys, m.value, item.assign) for m in members]
                continue
        elif (
            isinstance(value, nodes.ListNode)
            and value.items
            and all(isinstance(e, nodes.ObjectNode) for e in value.items)
        ):
            frontier += [nodes.Item(item.keys, e, item.assign) for e in value.items]
            continue
        kept.append(item)
    kept.reverse()
    body.items = kept
    for item in kept:
        for node in _children(item.value):
            _flatten(node)


def _children(node: nodes.Node | None) -> Iterator[nodes.ObjectList]:
    if isinstance(node, nodes.ObjectNode):
        yield node.body
    elif isinstance(node, nodes.ListNode):
        for element in node.items:
            yield from _children(element)
