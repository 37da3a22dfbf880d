"""The library's HCL parser, and the entry points that choose HCL or JSON."""

from __future__ import annotations

from pathlib import Path

from daemon.hcl import nodes
from daemon.hcl.json import _flatten, _JsonParser
from daemon.hcl.nodes import HclError, Token, _End, _Text
from daemon.hcl.scanner import _HclScanner, _Parser, _Tok

# --- the HCL parser -------------------------------------------------------------------------------


_LITERALS = frozenset({"NUMBER", "FLOAT", "BOOL", "STRING", "HEREDOC"})


class _HclParser(_Parser):
    """The library's HCL parser, with one token of look-back."""

    LITERALS = _LITERALS
    UNKNOWN_VALUE = "Unknown token"

    def __init__(self, text: _Text) -> None:
        super().__init__(text)
        self.scanner = _HclScanner(text)
        self.held = False

    def scan(self) -> _Tok:
        if self.held:
            self.held = False
            return self.tok
        tok = self.scanner.scan()
        while tok.kind == "COMMENT":
            tok = self.scanner.scan()
        self.tok = tok
        return tok

    def unscan(self) -> None:
        self.held = True

    def token(self, tok: _Tok) -> Token:
        line, column = self.t.where(tok.start)
        return Token(tok.kind, self.t.s[tok.start : tok.end], line, column)

    def object_list(self, braced: bool) -> nodes.ObjectList:
        items: list[nodes.Item] = []
        while True:
            if braced:
                tok = self.scan()
                self.unscan()
                if tok.kind == "RBRACE":
                    break
            try:
                item = self.object_item()
            except _End:
                break
            items.append(item)
            if self.scan().kind != "COMMA":
                self.unscan()
        return nodes.ObjectList(items)

    def object_item(self) -> nodes.Item:
        keys = self.object_keys()
        tok = self.tok
        if tok.kind == "ASSIGN":
            return nodes.Item(keys, self.value(), assign=True)
        if tok.kind == "LBRACE":
            return nodes.Item(keys, self.object())
        names = " ".join(k.text for k in keys)
        raise self.error(f"key '{names}' expected start of object ('{{') or assignment ('=')")

    def object_keys(self) -> list[Token]:
        keys: list[Token] = []
        while True:
            tok = self.scan()
            if tok.kind == "EOF":
                if not keys:
                    raise _End
                return keys  # the item then fails for want of '=' or '{'
            if tok.kind == "ASSIGN":
                if len(keys) > 1:
                    raise self.error("nested object expected: LBRACE got: ASSIGN")
                if not keys:
                    raise self.error("no object keys found!")
                return keys
            if tok.kind == "LBRACE":
                if not keys:
                    raise self.error("expected: IDENT | STRING got: LBRACE")
                return keys
            if tok.kind in ("IDENT", "STRING"):
                keys.append(self.token(tok))
                continue
            raise self.error(f"expected: IDENT | STRING | ASSIGN | LBRACE got: {tok.kind}")

    def object(self) -> nodes.ObjectNode:
        line, column = self.t.where(self.tok.start)
        self.deeper()
        body = self.object_list(braced=True)
        tok = self.scan()
        if tok.kind != "RBRACE":
            raise self.error(f"object expected closing RBRACE got: {tok.kind}")
        self.depth -= 1
        return nodes.ObjectNode(body, line, column)

    def list(self) -> nodes.ListNode:
        line, column = self.t.where(self.tok.start)
        self.deeper()
        items: list[nodes.Node] = []
        need_comma = False
        while True:
            tok = self.scan()
            if need_comma and tok.kind not in ("COMMA", "RBRACK"):
                raise self.error(f"error parsing list, expected comma or list end, got: {tok.kind}")
            if tok.kind in _LITERALS:
                items.append(nodes.Literal(self.token(tok)))
                need_comma = True
            elif tok.kind == "COMMA":
                need_comma = False
            elif tok.kind == "LBRACE":
                items.append(self.object())
                need_comma = True
            elif tok.kind == "LBRACK":
                items.append(self.list())
            elif tok.kind == "RBRACK":
                self.depth -= 1
                return nodes.ListNode(items, line, column)
            else:
                raise self.error(f"unexpected token while parsing list: {tok.kind}")


# --- entry points ---------------------------------------------------------------------------------

#: What Go's unicode.IsSpace holds for white space (the JSON test skips it).
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _is_json(text: str) -> bool:
    for ch in text:
        if ch in _GO_SPACE:
            continue
        return ch == "{"
    return False


def parse(text: str | bytes, path: Path | str = "<string>") -> nodes.ObjectList:
    """Parse a whole file as the library does (JSON when it starts with ``{``)."""
    return _parse(text, str(path))[0]


def work(text: str | bytes) -> int:
    """How many characters the scanner reads to parse ``text`` (whether or not it parses): the
    linearity test's measure of time."""
    try:
        return _parse(text, "<string>")[1]
    except HclError as exc:
        return exc.reads


def _parse(text: str | bytes, where: str) -> tuple[nodes.ObjectList, int]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    if _is_json(text):
        source = _Text(text, where)
        json_parser = _JsonParser(source)
        try:
            try:
                body = json_parser.root()
            except _End:
                raise source.error("EOF token found", source.n) from None
            _flatten(body)
        except HclError as exc:
            exc.reads = json_parser.scanner.reads
            raise
        return body, json_parser.scanner.reads
    source = _Text(text.replace("\r\n", "\n"), where)
    hcl_parser = _HclParser(source)
    try:
        return hcl_parser.object_list(braced=False), hcl_parser.scanner.reads
    except HclError as exc:
        exc.reads = hcl_parser.scanner.reads
        raise
