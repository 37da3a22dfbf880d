"""HCL1, read the way SPIRE reads its configuration: the HCL library it pins
(github.com/hashicorp/hcl v1.0.1-vault-7), its JSON form, and the decoding rules SPIRE relies on.

This module knows nothing of SPIRE; :mod:`daemon.spire_config` takes SPIRE's settings from what
it returns. What it follows of the library, as the library behaves (tests/test_hcl_oracle.py runs
a corpus through both and fails on any difference):

* **Mode.** A text whose first character that is not white space is ``{`` is JSON, anything else
  HCL.
* **HCL tokens.** Identifiers (letters, digits, ``_``, ``-`` and ``.``), ``true``/``false``,
  numbers (decimal, octal, hexadecimal, floats with their quirks), quoted strings (escapes
  ``\\a \\b \\f \\n \\r \\t \\v \\\\ \\"``, three octal digits, ``\\x``, ``\\u``, ``\\U``; a
  ``${...}`` part may hold quotes and newlines and is kept as written), heredocs (``<<EOF`` and
  ``<<-EOF``), comments (``#``, ``//`` and ``/* */``). CRLF line ends count as LF.
* **HCL structure.** Items ``key = value`` and ``key [key...] { ... }``, keys being identifiers
  or strings; values are literals, lists ``[...]`` and objects ``{...}``. Commas between items
  are allowed. A key with ``=`` and nothing after it at the very end of the text is dropped, as
  the library drops it.
* **JSON.** Parsed as the library does, leniently: it reads one object and stops at the first
  token that does not continue it; ``null`` is an empty string; booleans and nested lists inside
  lists are dropped; then objects whose members are all objects are flattened into items with
  several keys, as HCL blocks with labels would be.
* **Decoding.** A field matches the items whose first key equals its name, ignoring case (Go's
  simple case folding); items with more keys are matched by their first key and decoded as
  nested items; several matches are decoded in order, so the last scalar wins and repeated
  blocks merge.

Errors are :class:`HclError` with the file, line and column. The reader always terminates, in
time linear in its input; nesting is limited to :data:`MAX_DEPTH` levels (the library has no
limit; no real configuration comes near it).
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

__all__ = [
    "MAX_DEPTH",
    "HclError",
    "Item",
    "ListNode",
    "Literal",
    "Node",
    "ObjectList",
    "ObjectNode",
    "Token",
    "expand_env",
    "filter_items",
    "fold_equal",
    "parse",
    "render",
    "work",
]

#: Nested objects and lists allowed, counted from the top.
MAX_DEPTH = 100


class HclError(Exception):
    """A text SPIRE's HCL library would not read (or this reader does not), with its place."""

    def __init__(self, message: str, path: str = "<string>", line: int = 0, column: int = 0):
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        self.reads = 0  # characters the scanner had read (see work())
        where = f"{path}:{line}:{column}" if line else path
        super().__init__(f"{where}: {message}")


# --- tokens ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """A token as the library keeps it: its kind, its source text and where it starts.

    ``kind`` is one of IDENT, NUMBER, FLOAT, BOOL, STRING, HEREDOC. ``json`` marks a string read
    from JSON, whose escapes follow Go's own rules rather than HCL's.
    """

    kind: str
    text: str
    line: int = 0
    column: int = 0
    json: bool = False

    def string(self) -> str:
        """The token's value as a string: an identifier's text, a string unquoted, a heredoc's
        body. Raises :class:`HclError` where the library would fail."""
        if self.kind == "IDENT":
            return self.text
        if self.kind == "HEREDOC":
            return _heredoc_value(self.text)
        if self.kind == "STRING":
            if self.text == "":
                return ""  # JSON null
            raw = _unquote_go(self.text) if self.json else _unquote_hcl(self.text)
            if raw is None:
                where = ("<string>", self.line, self.column)
                raise HclError(f"malformed string {self.text[:40]}", *where)
            return raw.decode("utf-8", errors="replace")
        raise HclError(f"a {self.kind} is not a string", "<string>", self.line, self.column)


@dataclass(frozen=True, slots=True)
class Literal:
    """A literal value: number, float, bool, string or heredoc."""

    token: Token


@dataclass(slots=True)
class ListNode:
    """``[ ... ]``."""

    items: list[Node]
    line: int = 0
    column: int = 0


@dataclass(slots=True)
class ObjectList:
    """Items, at the top of a file or inside braces."""

    items: list[Item] = field(default_factory=list)


@dataclass(slots=True)
class ObjectNode:
    """``{ ... }``."""

    body: ObjectList
    line: int = 0
    column: int = 0


@dataclass(slots=True)
class Item:
    """``key ... = value`` or ``key ... { ... }``: keys (identifiers or strings), and a value."""

    keys: list[Token]
    value: Node | None
    assign: bool = False  # written with "=" (or ":" in JSON)

    @property
    def line(self) -> int:
        """Where the item starts."""
        return self.keys[0].line if self.keys else 0


Node: TypeAlias = Literal | ListNode | ObjectNode | ObjectList


# --- text positions -------------------------------------------------------------------------------


class _Text:
    """The source text, with line and column numbers for its offsets (columns count characters,
    from 1, as the library's do)."""

    def __init__(self, text: str, path: str) -> None:
        self.s = text
        self.n = len(text)
        self.path = path
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def where(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self._starts, offset) - 1
        return index + 1, offset - self._starts[index] + 1

    def error(self, message: str, offset: int) -> HclError:
        line, column = self.where(min(offset, self.n))
        return HclError(message, self.path, line, column)

    def fatal(self, message: str, offset: int) -> HclError:
        """An error no enclosing rule may pass over (the scanner's, or too deep a nesting)."""
        line, column = self.where(min(offset, self.n))
        return _Fatal(message, self.path, line, column)


class _Fatal(HclError):
    """A scanner error or too deep a nesting: the library fails the whole parse on any scanner
    error, even where its JSON parser would pass over a parse error."""


_EOF = "\x00"  # never returned for a real character: a NUL in the text is an error
_WHITESPACE = frozenset(" \t\n\r")


def _letter(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z" or ch == "_" or (ch >= "\x80" and ch.isalpha())


def _digit(ch: str) -> bool:
    return "0" <= ch <= "9" or (ch >= "\x80" and unicodedata.category(ch) == "Nd")


def _decimal(ch: str) -> bool:
    return "0" <= ch <= "9"


def _hex(ch: str) -> bool:
    return "0" <= ch <= "9" or "a" <= ch <= "f" or "A" <= ch <= "F"


def _digit_value(ch: str) -> int:
    if "0" <= ch <= "9":
        return ord(ch) - 48
    if "a" <= ch <= "f":
        return ord(ch) - 87
    if "A" <= ch <= "F":
        return ord(ch) - 55
    return 16


class _Reader:
    """Character reading with one character of pushback, as both scanners need it."""

    def __init__(self, text: _Text) -> None:
        self.t = text
        self.i = 0
        self.reads = 0  # characters read, for the linearity test

    def next(self) -> str:
        t = self.t
        self.reads += 1
        if self.i >= t.n:
            self.i = t.n + 1  # one past the end: unread() comes back to the end
            return _EOF
        ch = t.s[self.i]
        self.i += 1
        if ch == "\x00":
            raise t.fatal("unexpected null character (0x00)", self.i - 1)
        if ch == "\ue123":
            raise t.fatal("unicode code point U+E123 reserved for internal use", self.i - 1)
        if "\udc80" <= ch <= "\udcff":  # an undecodable byte (surrogate escape)
            raise t.fatal("illegal UTF-8 encoding", self.i - 1)
        return ch

    def unread(self) -> None:
        self.i -= 1

    def peek(self) -> str:
        t = self.t
        return t.s[self.i] if self.i < t.n else _EOF

    def error(self, message: str, offset: int | None = None) -> HclError:
        return self.t.fatal(message, self.i if offset is None else offset)

    # number parts, shared by both scanners: where the library stops and what it swallows

    def _escape(self) -> None:
        """A backslash escape inside a string, as both of the library's scanners read it."""
        ch = self.next()
        if ch != _EOF and ch in 'abfnrtv\\"':
            return
        if "0" <= ch <= "7":
            self._digits(ch, 8, 3)
        elif ch == "x":
            self._digits(self.next(), 16, 2)
        elif ch == "u":
            self._digits(self.next(), 16, 4)
        elif ch == "U":
            self._digits(self.next(), 16, 8)
        else:
            raise self.error("illegal char escape")

    def _digits(self, ch: str, base: int, n: int) -> None:
        raise NotImplementedError  # each scanner ends an escape's digits its own way

    def _mantissa(self, ch: str, *, peeked: bool = False) -> str:
        """Read decimal digits from ``ch`` on; return the first other character, put back."""
        if peeked:
            if not _decimal(ch):
                return ch
            ch = self.next()
        scanned = False
        while _decimal(ch):
            ch = self.next()
            scanned = True
        if scanned and ch != _EOF:
            self.unread()
        return ch

    def _exponent(self, ch: str) -> str:
        if ch in "eE" and ch != _EOF:
            ch = self.next()
            if ch in "-+" and ch != _EOF:
                ch = self.next()
            ch = self._mantissa(ch)
        return ch

    def _fraction(self, ch: str) -> str:
        if ch == ".":
            ch = self._mantissa(self.peek(), peeked=True)
        return ch


# --- the HCL scanner ------------------------------------------------------------------------------

_PUNCTUATION = {
    "[": "LBRACK",
    "]": "RBRACK",
    "{": "LBRACE",
    "}": "RBRACE",
    ",": "COMMA",
    "=": "ASSIGN",
}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    start: int
    end: int


class _HclScanner(_Reader):
    """HCL's tokens. Every error is raised at once: the library reports scanner errors as a
    failure of the whole parse, so the first one decides."""

    def scan(self) -> _Tok:
        ch = self.next()
        while ch in _WHITESPACE:
            ch = self.next()
        start = self.i - 1
        if ch == _EOF:
            return _Tok("EOF", self.t.n, self.t.n)
        if _letter(ch):
            while True:
                ch = self.next()
                if not (_letter(ch) or _digit(ch) or ch in "-."):
                    break
            if ch != _EOF:
                self.unread()
            text = self.t.s[start : self.i]
            return _Tok("BOOL" if text in ("true", "false") else "IDENT", start, self.i)
        if _decimal(ch):
            return _Tok(self._number(ch), start, self._end())
        if ch == '"':
            self._string(start)
            return _Tok("STRING", start, self.i)
        if ch in "#/":
            self._comment(ch, start)
            return _Tok("COMMENT", start, self._end())
        if ch == ".":
            if _decimal(self.peek()):
                self._exponent(self._mantissa(self.peek(), peeked=True))
                return _Tok("FLOAT", start, self._end())
            return _Tok("PERIOD", start, self.i)
        if ch == "<":
            self._heredoc(start)
            return _Tok("HEREDOC", start, self.i)
        if ch in _PUNCTUATION:
            return _Tok(_PUNCTUATION[ch], start, self.i)
        if ch == "+":
            return _Tok("ADD", start, self.i)
        if ch == "-":
            if _decimal(self.peek()):
                return _Tok(self._number(self.next()), start, self._end())
            return _Tok("SUB", start, self.i)
        raise self.error("illegal char", start)

    def _end(self) -> int:
        return min(self.i, self.t.n)

    def _number(self, ch: str) -> str:
        if ch == "0":
            ch = self.next()
            if ch in "xX" and ch != _EOF:
                ch = self.next()
                found = False
                while _hex(ch):
                    ch = self.next()
                    found = True
                if not found:
                    raise self.error("illegal hexadecimal number")
                if ch != _EOF:
                    self.unread()
                return "NUMBER"
            illegal_octal = False
            while _decimal(ch):
                ch = self.next()
                if ch in "89" and ch != _EOF:
                    illegal_octal = True
            if ch in "eE" and ch != _EOF:
                self._exponent(ch)
                return "FLOAT"
            if ch == ".":
                ch = self._fraction(ch)
                if ch in "eE" and ch != _EOF:
                    self._exponent(self.next())
                return "FLOAT"
            if illegal_octal:
                raise self.error("illegal octal number")
            if ch != _EOF:
                self.unread()
            return "NUMBER"
        self._mantissa(ch)
        ch = self.next()
        if ch in "eE" and ch != _EOF:
            self._exponent(ch)
            return "FLOAT"
        if ch == ".":
            ch = self._fraction(ch)
            if ch in "eE" and ch != _EOF:
                self._exponent(self.next())
            return "FLOAT"
        if ch != _EOF:
            self.unread()
        return "NUMBER"

    def _string(self, start: int) -> None:
        braces = 0
        while True:
            ch = self.next()
            if (ch == "\n" and braces == 0) or ch == _EOF:
                raise self.error("literal not terminated", start)
            if ch == '"' and braces == 0:
                return
            if braces == 0 and ch == "$" and self.peek() == "{":
                braces += 1
                self.next()
            elif braces > 0 and ch == "{":
                braces += 1
            if braces > 0 and ch == "}":
                braces -= 1
            if ch == "\\":
                self._escape()

    def _digits(self, ch: str, base: int, n: int) -> None:
        start = n
        while n > 0 and _digit_value(ch) < base:
            ch = self.next()
            if ch == _EOF:
                break
            n -= 1
        if n > 0:
            raise self.error("illegal char escape")
        if n != start and ch != _EOF:
            self.unread()

    def _comment(self, ch: str, start: int) -> None:
        if ch == "#" or self.peek() != "*":
            if ch == "/" and self.peek() != "/":
                raise self.error("expected '/' for comment", start)
            ch = self.next()
            while ch not in ("\n", _EOF):
                ch = self.next()
            if ch != _EOF:
                self.unread()
            return
        self.next()  # the '*'
        ch = self.next()
        while True:
            if ch == _EOF:
                raise self.error("comment not terminated", start)
            previous, ch = ch, self.next()
            if previous == "*" and ch == "/":
                return

    def _heredoc(self, start: int) -> None:
        if self.next() != "<":
            raise self.error("heredoc expected second '<', didn't see it", start)
        anchor_start = self.i
        ch = self.next()
        if ch == "-":
            ch = self.next()
        while _letter(ch) or _digit(ch):
            ch = self.next()
        if ch == _EOF:
            raise self.error("heredoc not terminated", start)
        if ch == "\r" and self.peek() == "\n":
            ch = self.next()
        if ch != "\n":
            raise self.error("invalid characters in heredoc anchor", start)
        anchor = self.t.s[anchor_start : self.i - 1]
        if anchor in ("", "-"):
            raise self.error("zero-length heredoc anchor", start)
        marker = anchor[1:] if anchor.startswith("-") else anchor
        closing = re.compile(r"[ \t\n\v\f\r]*" + re.escape(marker) + r"\r*")
        s = self.t.s
        line_start = self.i
        while True:
            newline = s.find("\n", self.i)
            if newline < 0:
                self._check_chars(self.i, self.t.n)
                raise self.error("heredoc not terminated", start)
            self._check_chars(self.i, newline)
            self.reads += newline + 1 - self.i
            self.i = newline + 1
            line = s[line_start:newline]
            if len(line.encode("utf-8", "surrogateescape")) >= len(
                anchor.encode("utf-8", "surrogateescape")
            ) and closing.fullmatch(line):
                return
            line_start = self.i

    def _check_chars(self, begin: int, end: int) -> None:
        """Characters a heredoc's body may not hold, as ``next`` would find them."""
        for match in _BAD_CHARS.finditer(self.t.s, begin, end):
            bad = match.group()
            if bad == "\x00":
                raise self.t.fatal("unexpected null character (0x00)", match.start())
            if bad == "\ue123":
                raise self.t.fatal(
                    "unicode code point U+E123 reserved for internal use", match.start()
                )
            raise self.t.fatal("illegal UTF-8 encoding", match.start())


_BAD_CHARS = re.compile("[\x00\ue123\udc80-\udcff]")


# --- string values --------------------------------------------------------------------------------


def _encode(ch: str) -> bytes:
    return ch.encode("utf-8", "surrogateescape")


def _rune(value: int) -> bytes:
    """A code point as Go encodes it: invalid ones (surrogates, too large) as U+FFFD."""
    if 0xD800 <= value <= 0xDFFF or value > 0x10FFFF:
        return "\ufffd".encode()
    return chr(value).encode("utf-8")


_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}


def _escape_at(s: str, i: int, *, go: bool) -> tuple[bytes, int] | None:
    """The escape starting at ``s[i] == '\\'``: its bytes and where it ends, or None."""
    if i + 1 >= len(s):
        return None
    c = s[i + 1]
    if c in _SIMPLE_ESCAPES:
        return bytes([_SIMPLE_ESCAPES[c]]), i + 2
    if c in "xuU":
        width = {"x": 2, "u": 4, "U": 8}[c]
        digits = s[i + 2 : i + 2 + width]
        if len(digits) < width or not all(_hex(d) for d in digits):
            return None
        value = int(digits, 16)
        if c == "x":
            return bytes([value]), i + 2 + width
        if go and (0xD800 <= value <= 0xDFFF or value > 0x10FFFF):
            return None  # Go's strconv refuses what is not a valid code point
        if value > 0x10FFFF:
            return None
        return _rune(value), i + 2 + width
    if "0" <= c <= "7":
        digits = s[i + 1 : i + 4]
        if len(digits) < 3 or not all("0" <= d <= "7" for d in digits):
            return None
        value = int(digits, 8)
        if value > 255:
            return None
        return bytes([value]), i + 4
    return None


def _unquote_hcl(text: str) -> bytes | None:
    """HCL's own unquoting: escapes outside ``${...}``, the inside of ``${...}`` as written."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    s = text[1:-1]
    if "$" not in s and "{" not in s and "\n" in s:
        return None
    if "\\" not in s and '"' not in s and "$" not in s:
        return _encode(s)
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        if s[i] == "$" and i + 1 < n and s[i + 1] == "{":
            depth, j = 1, i + 2
            while j < n and depth > 0:
                if s[j] == "{":
                    depth += 1
                elif s[j] == "}":
                    depth -= 1
                j += 1
            if depth != 0:
                return None
            out += _encode(s[i:j])
            i = j
            continue
        ch = s[i]
        if ch in ("\n", '"'):
            return None
        if ch != "\\":
            out += _encode(ch)
            i += 1
            continue
        found = _escape_at(s, i, go=False)
        if found is None:
            return None
        value, i = found
        out += value
    return bytes(out)


def _unquote_go(text: str) -> bytes | None:
    """Go's strconv.Unquote of a double-quoted literal (JSON strings)."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    s = text[1:-1]
    if "\n" in s:
        return None
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == '"':
            return None
        if ch != "\\":
            out += _encode(ch)
            i += 1
            continue
        found = _escape_at(s, i, go=True)
        if found is None:
            return None
        value, i = found
        out += value
    return bytes(out)


def _heredoc_value(text: str) -> str:
    """A heredoc's value, with the library's arithmetic: the first line (the marker) and the
    closing marker's length cut off; ``<<-`` removes the closing line's indentation from every
    line when all of them have it."""
    idx = text.index("\n")
    end = len(text) - idx
    if text[2] != "-":
        return text[idx + 1 : end + 1]
    lines = text[idx + 1 : end + 2].split("\n")
    prefix = lines[-1]
    if not all(line.startswith(prefix) for line in lines):
        return text[idx + 1 : end + 1].rstrip(" \t")
    return "\n".join([line[len(prefix) :] for line in lines[:-1]] + [""])


# --- the HCL parser -------------------------------------------------------------------------------


class _End(Exception):
    """The library's end-of-input signal, which ends an item list quietly where it is caught."""


_LITERALS = frozenset({"NUMBER", "FLOAT", "BOOL", "STRING", "HEREDOC"})


class _HclParser:
    def __init__(self, text: _Text) -> None:
        self.t = text
        self.scanner = _HclScanner(text)
        self.tok = _Tok("EOF", 0, 0)
        self.held = False
        self.depth = 0

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

    def error(self, message: str, tok: _Tok | None = None) -> HclError:
        return self.t.error(message, (tok or self.tok).start)

    def token(self, tok: _Tok) -> Token:
        line, column = self.t.where(tok.start)
        return Token(tok.kind, self.t.s[tok.start : tok.end], line, column)

    def object_list(self, braced: bool) -> ObjectList:
        items: list[Item] = []
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
        return ObjectList(items)

    def object_item(self) -> Item:
        keys = self.object_keys()
        tok = self.tok
        if tok.kind == "ASSIGN":
            return Item(keys, self.value(), assign=True)
        if tok.kind == "LBRACE":
            return Item(keys, self.object())
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

    def value(self) -> Node:
        tok = self.scan()
        if tok.kind in _LITERALS:
            return Literal(self.token(tok))
        if tok.kind == "LBRACE":
            return self.object()
        if tok.kind == "LBRACK":
            return self.list()
        if tok.kind == "EOF":
            raise _End
        raise self.error(f"Unknown token: {tok.kind}")

    def _deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.t.fatal(f"nested more than {MAX_DEPTH} levels deep", self.tok.start)

    def object(self) -> ObjectNode:
        line, column = self.t.where(self.tok.start)
        self._deeper()
        body = self.object_list(braced=True)
        tok = self.scan()
        if tok.kind != "RBRACE":
            raise self.error(f"object expected closing RBRACE got: {tok.kind}")
        self.depth -= 1
        return ObjectNode(body, line, column)

    def list(self) -> ListNode:
        line, column = self.t.where(self.tok.start)
        self._deeper()
        items: list[Node] = []
        need_comma = False
        while True:
            tok = self.scan()
            if need_comma and tok.kind not in ("COMMA", "RBRACK"):
                raise self.error(f"error parsing list, expected comma or list end, got: {tok.kind}")
            if tok.kind in _LITERALS:
                items.append(Literal(self.token(tok)))
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
                return ListNode(items, line, column)
            else:
                raise self.error(f"unexpected token while parsing list: {tok.kind}")


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

    def scan(self) -> _Tok:
        ch = self.next()
        while ch in _WHITESPACE:
            ch = self.next()
        start = self.i - 1
        if ch == _EOF:
            return _Tok("EOF", self.t.n, self.t.n)
        if _letter(ch):
            while True:
                ch = self.next()
                if not (_letter(ch) or _digit(ch) or ch == "-"):
                    break
            if ch != _EOF:
                self.unread()
            text = self.t.s[start : self.i]
            if text in ("true", "false"):
                return _Tok("BOOL", start, self.i)
            if text == "null":
                return _Tok("NULL", start, self.i)
            raise self.error("illegal char", start)
        if _decimal(ch):
            return _Tok(self._number(ch), start, min(self.i, self.t.n))
        if ch == '"':
            self._string(start)
            return _Tok("STRING", start, self.i)
        if ch == ".":
            if _decimal(self.peek()):
                ch = self._mantissa(self.peek(), peeked=True)
                self._exponent(ch)
                return _Tok("FLOAT", start, min(self.i, self.t.n))
            return _Tok("PERIOD", start, self.i)
        if ch in _JSON_PUNCTUATION:
            return _Tok(_JSON_PUNCTUATION[ch], start, self.i)
        if ch == "-":
            if _decimal(self.peek()):
                return _Tok(self._number(self.next()), start, min(self.i, self.t.n))
            raise self.error("illegal char", start)
        raise self.error(f"illegal char: {ch}", start)

    def _number(self, ch: str) -> str:
        zero = ch == "0"
        after_first = self.i  # the library compares positions, which move on every read at the end
        self._mantissa(ch)
        ch = self.next()
        if ch in "eE" and ch != _EOF:
            self._exponent(ch)
            return "FLOAT"
        if ch == ".":
            ch = self._fraction(ch)
            if ch in "eE" and ch != _EOF:
                self._exponent(self.next())
            return "FLOAT"
        if ch != _EOF:
            self.unread()
        if zero and self.i != after_first:
            raise self.error("numbers cannot start with 0")
        return "NUMBER"

    def _string(self, start: int) -> None:
        braces = 0
        while True:
            ch = self.next()
            if ch in ("\n", _EOF):
                raise self.error("literal not terminated", start)
            if ch == '"':
                return
            if braces == 0 and ch == "$" and self.peek() == "{":
                braces += 1
                self.next()
            elif braces > 0 and ch == "{":
                braces += 1
            if braces > 0 and ch == "}":
                braces -= 1
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


class _JsonParser:
    """The library's JSON parser: one object, read as far as its tokens continue it."""

    def __init__(self, text: _Text) -> None:
        self.t = text
        self.scanner = _JsonScanner(text)
        self.tok = _Tok("EOF", 0, 0)
        self.depth = 0

    def scan(self) -> _Tok:
        self.tok = self.scanner.scan()
        return self.tok

    def error(self, message: str) -> HclError:
        return self.t.error(message, self.tok.start)

    def token(self, tok: _Tok) -> Token:
        line, column = self.t.where(tok.start)
        if tok.kind == "NULL":
            return Token("STRING", "", line, column)
        text = self.t.s[tok.start : tok.end]
        return Token(tok.kind, text, line, column, json=tok.kind == "STRING")

    def root(self) -> ObjectList:
        tok = self.scan()
        if tok.kind != "LBRACE":
            raise self.error(f"Expected object, got unknown token: {tok.kind}")
        return self.object().body

    def object(self) -> ObjectNode:
        line, column = self.t.where(self.tok.start)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.t.fatal(f"nested more than {MAX_DEPTH} levels deep", self.tok.start)
        items, failure = self.object_list()
        if failure is not None and self.tok.kind != "RBRACE":
            raise failure
        self.depth -= 1
        return ObjectNode(ObjectList(items), line, column)

    def object_list(self) -> tuple[list[Item], HclError | None]:
        items: list[Item] = []
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

    def object_item(self) -> Item:
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
        return Item(keys, self.value(), assign=True)

    def value(self) -> Node:
        tok = self.scan()
        if tok.kind in ("NUMBER", "FLOAT", "BOOL", "NULL", "STRING"):
            return Literal(self.token(tok))
        if tok.kind == "LBRACE":
            return self.object()
        if tok.kind == "LBRACK":
            return self.list()
        if tok.kind == "EOF":
            raise _End
        raise self.error(f"Expected object value, got unknown token: {tok.kind}")

    def list(self) -> ListNode:
        line, column = self.t.where(self.tok.start)
        items: list[Node] = []
        while True:
            tok = self.scan()
            if tok.kind in ("NUMBER", "FLOAT", "STRING"):
                items.append(Literal(self.token(tok)))
            elif tok.kind == "LBRACE":
                items.append(self.object())
            elif tok.kind in ("COMMA", "BOOL", "LBRACK"):
                continue  # the library drops booleans and nested lists here
            elif tok.kind == "RBRACK":
                return ListNode(items, line, column)
            else:
                raise self.error(f"unexpected token while parsing list: {tok.kind}")


def _flatten(body: ObjectList) -> None:
    """The library's flattening of JSON: an item whose object holds only objects becomes one item
    per member, keys joined (``"a": {"b": {...}}`` reads as ``a b {...}``); an item whose list
    holds only objects, one item per element. Applied to every object list, top down."""
    kept: list[Item] = []
    frontier = list(body.items)
    while frontier:
        item = frontier.pop()
        value = item.value
        if isinstance(value, ObjectNode):
            members = value.body.items
            if members and all(isinstance(m.value, ObjectNode) for m in members):
                frontier += [Item(item.keys + m.keys, m.value, item.assign) for m in members]
                continue
        elif (
            isinstance(value, ListNode)
            and value.items
            and all(isinstance(e, ObjectNode) for e in value.items)
        ):
            frontier += [Item(item.keys, e, item.assign) for e in value.items]
            continue
        kept.append(item)
    kept.reverse()
    body.items = kept
    for item in kept:
        for node in _children(item.value):
            _flatten(node)


def _children(node: Node | None) -> Iterator[ObjectList]:
    if isinstance(node, ObjectNode):
        yield node.body
    elif isinstance(node, ListNode):
        for element in node.items:
            yield from _children(element)


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


def parse(text: str | bytes, path: Path | str = "<string>") -> ObjectList:
    """Parse a whole file as the library does (JSON when it starts with ``{``)."""
    return _parse(text, str(path))[0]


def work(text: str | bytes) -> int:
    """How many characters the scanner reads to parse ``text`` (whether or not it parses): the
    linearity test's measure of time."""
    try:
        return _parse(text, "<string>")[1]
    except HclError as exc:
        return exc.reads


def _parse(text: str | bytes, where: str) -> tuple[ObjectList, int]:
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


# --- decoding helpers -----------------------------------------------------------------------------

#: Characters Go's simple case folding ties to an ASCII letter besides its other case.
_EXTRA_FOLDS = {"k": "\u212a", "s": "\u017f"}


def fold_equal(key: str, name: str) -> bool:
    """Whether ``key`` equals the ASCII field ``name`` under Go's strings.EqualFold."""
    if len(key) != len(name):
        return False
    for ch, want in zip(key, name, strict=True):
        if ch == want:
            continue
        if not want.isascii() or not want.isalpha():
            return False
        lower = want.lower()
        if ch not in (lower, want.upper(), _EXTRA_FOLDS.get(lower)):
            return False
    return True


def filter_items(items: list[Item], name: str) -> list[Item]:
    """The items whose first key matches ``name`` (ignoring case), that key removed."""
    return [
        Item(item.keys[1:], item.value, item.assign)
        for item in items
        if item.keys and fold_equal(item.keys[0].string(), name)
    ]


def expand_env(text: str, lookup: Callable[[str], str] | Mapping[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` replaced as SPIRE's ``-expandEnv`` does (Go's os.Expand, where
    ``$$`` stands for ``$`` and an unset variable for the empty string)."""
    get = lookup.get if isinstance(lookup, Mapping) else lookup

    def value(name: str) -> str:
        if name == "$":
            return "$"
        found = get(name)
        return "" if found is None else str(found)

    out: list[str] = []
    i = 0
    n = len(text)
    j = 0
    while j < n:
        if text[j] == "$" and j + 1 < n:
            out.append(text[i:j])
            name, width = _shell_name(text, j + 1)
            if name == "" and width > 0:
                pass  # bad syntax: the characters are eaten
            elif name == "":
                out.append("$")
            else:
                out.append(value(name))
            j += width
            i = j + 1
        j += 1
    out.append(text[i:])
    return "".join(out)


_SPECIAL = frozenset("*#$@!?-0123456789")


def _shell_name(s: str, at: int) -> tuple[str, int]:
    if s[at] == "{":
        if len(s) - at > 2 and s[at + 1] in _SPECIAL and s[at + 2] == "}":
            return s[at + 1], 3
        close = s.find("}", at + 1)
        if close < 0:
            return "", 1
        if close == at + 1:
            return "", 2
        return s[at + 1 : close], close - at + 1
    if s[at] in _SPECIAL:
        return s[at], 1
    end = at
    while end < len(s) and (s[end] == "_" or (s[end].isascii() and s[end].isalnum())):
        end += 1
    return s[at:end], end - at


def render(node: Node) -> str:
    """Print a node back to HCL text as the library's printer does, as far as reading it again
    can tell: SPIRE prints a plugin's ``plugin_data`` and the plugin decodes that text."""
    if isinstance(node, ObjectList):
        return "\n".join(_render_item(item) for item in node.items)
    if isinstance(node, Literal):
        text = node.token.text
        if node.token.kind == "HEREDOC" and text.endswith("\n"):
            text = text[:-1]
        return text
    if isinstance(node, ObjectNode):
        if not node.body.items:
            return "{}"
        return "{\n" + render(node.body) + "\n}"
    parts = []
    for element in node.items:
        text = render(element)
        if isinstance(element, Literal) and element.token.kind == "HEREDOC":
            text += "\n"
        parts.append(text)
    return "[" + ", ".join(parts) + "]"


def _render_item(item: Item) -> str:
    keys = " ".join(k.text for k in item.keys)
    joiner = " = " if item.assign and len(item.keys) == 1 else " "
    return keys + joiner + (render(item.value) if item.value is not None else "")
