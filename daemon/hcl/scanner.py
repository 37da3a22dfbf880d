"""The library's HCL scanner: characters to tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass

from daemon.hcl import nodes
from daemon.hcl.nodes import MAX_DEPTH, HclError, Token, _End, _Text
from daemon.hcl.strings import _EOF, _WHITESPACE, _decimal, _digit, _digit_value, _hex, _letter


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

    def braces(self, depth: int, ch: str) -> int:
        """The ``${...}`` nesting inside a string after ``ch``: ``${`` opens (its ``{`` is read
        here), a ``{`` within nests, a ``}`` closes; both scanners count the same way."""
        if depth == 0 and ch == "$" and self.peek() == "{":
            self.next()
            return 1
        if depth > 0 and ch == "{":
            return depth + 1
        if depth > 0 and ch == "}":
            return depth - 1
        return depth

    #: The characters a word may hold besides letters and digits.
    WORD: str

    def scan(self) -> _Tok:
        """The next token. What both scanners read alike comes here; words and the rest go to
        :meth:`word_token` and :meth:`symbol`."""
        ch, start = self.first()
        if ch == _EOF:
            return _Tok("EOF", self.t.n, self.t.n)
        if _letter(ch):
            return self.word_token(self.word(start, self.WORD), start)
        if _decimal(ch):
            return _Tok(self._number(ch), start, self._end())
        if ch == '"':
            self._string(start)
            return _Tok("STRING", start, self.i)
        if ch == ".":
            if _decimal(self.peek()):
                self._exponent(self._mantissa(self.peek(), peeked=True))
                return _Tok("FLOAT", start, self._end())
            return _Tok("PERIOD", start, self.i)
        return self.symbol(ch, start)

    def word_token(self, text: str, start: int) -> _Tok:
        raise NotImplementedError

    def symbol(self, ch: str, start: int) -> _Tok:
        raise NotImplementedError

    def _number(self, ch: str) -> str:
        raise NotImplementedError

    def _string(self, start: int) -> None:
        raise NotImplementedError

    def _end(self) -> int:
        return min(self.i, self.t.n)

    def first(self) -> tuple[str, int]:
        """The first character after white space, and where it stands."""
        ch = self.next()
        while ch in _WHITESPACE:
            ch = self.next()
        return ch, self.i - 1

    def word(self, start: int, also: str) -> str:
        """The word that began at ``start``: letters, digits and the characters in ``also``."""
        while True:
            ch = self.next()
            if not (_letter(ch) or _digit(ch) or ch in also):
                break
        if ch != _EOF:
            self.unread()
        return self.t.s[start : self.i]

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

    def _float_part(self, ch: str) -> bool:
        """After a number's digits: whether an exponent, or a fraction and its exponent, follow
        (read here), making it a FLOAT."""
        if ch in "eE" and ch != _EOF:
            self._exponent(ch)
            return True
        if ch == ".":
            ch = self._fraction(ch)
            if ch in "eE" and ch != _EOF:
                self._exponent(self.next())
            return True
        return False

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

    def _decimal_number(self, ch: str) -> str:
        """The rest of a decimal number that began with ``ch``: NUMBER, or FLOAT with a fraction
        or an exponent."""
        self._mantissa(ch)
        ch = self.next()
        if self._float_part(ch):
            return "FLOAT"
        if ch != _EOF:
            self.unread()
        return "NUMBER"

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


class _Parser:
    """What the library's HCL and JSON parsers share: the current token, the nesting depth and
    the reading of one value."""

    #: Token kinds that are a value by themselves.
    LITERALS: frozenset[str]
    #: How the library words a token that cannot start a value.
    UNKNOWN_VALUE: str

    def __init__(self, text: _Text) -> None:
        self.t = text
        self.tok = _Tok("EOF", 0, 0)
        self.depth = 0

    def scan(self) -> _Tok:
        raise NotImplementedError

    def token(self, tok: _Tok) -> Token:
        raise NotImplementedError

    def object(self) -> nodes.ObjectNode:
        raise NotImplementedError

    def list(self) -> nodes.ListNode:
        raise NotImplementedError

    def error(self, message: str) -> HclError:
        return self.t.error(message, self.tok.start)

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.t.fatal(f"nested more than {MAX_DEPTH} levels deep", self.tok.start)

    def value(self) -> nodes.Node:
        tok = self.scan()
        if tok.kind in self.LITERALS:
            return nodes.Literal(self.token(tok))
        if tok.kind == "LBRACE":
            return self.object()
        if tok.kind == "LBRACK":
            return self.list()
        if tok.kind == "EOF":
            raise _End
        raise self.error(f"{self.UNKNOWN_VALUE}: {tok.kind}")


class _HclScanner(_Reader):
    """HCL's tokens. Every error is raised at once: the library reports scanner errors as a
    failure of the whole parse, so the first one decides."""

    WORD = "-."

    def word_token(self, text: str, start: int) -> _Tok:
        return _Tok("BOOL" if text in ("true", "false") else "IDENT", start, self.i)

    def symbol(self, ch: str, start: int) -> _Tok:
        if ch in "#/":
            self._comment(ch, start)
            return _Tok("COMMENT", start, self._end())
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
            if self._float_part(ch):
                return "FLOAT"
            if illegal_octal:
                raise self.error("illegal octal number")
            if ch != _EOF:
                self.unread()
            return "NUMBER"
        return self._decimal_number(ch)

    def _string(self, start: int) -> None:
        braces = 0
        while True:
            ch = self.next()
            if (ch == "\n" and braces == 0) or ch == _EOF:
                raise self.error("literal not terminated", start)
            if ch == '"' and braces == 0:
                return
            braces = self.braces(braces, ch)
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
