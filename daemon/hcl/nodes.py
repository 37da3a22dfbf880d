"""The reader's values: tokens, the tree of items, errors with their positions."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import TypeAlias

from daemon.hcl.strings import _heredoc_value, _unquote_go, _unquote_hcl

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


class _End(Exception):
    """The library's end-of-input signal, which ends an item list quietly where it is caught."""
