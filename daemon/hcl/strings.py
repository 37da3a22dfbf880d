"""Characters as the library classifies them, and string values: HCL's and Go's unquoting,
heredoc bodies."""

from __future__ import annotations

import unicodedata

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
        if s[i] in ("\n", '"'):
            return None
        step = _character(s, i, out, go=False)
        if step is None:
            return None
        i = step
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
        step = None if s[i] == '"' else _character(s, i, out, go=True)
        if step is None:
            return None
        i = step
    return bytes(out)


def _character(s: str, i: int, out: bytearray, *, go: bool) -> int | None:
    """Append the character or escape sequence at ``s[i]`` to ``out``; where the next one starts,
    or None for an escape the rules refuse."""
    if s[i] != "\\":
        out += _encode(s[i])
        return i + 1
    found = _escape_at(s, i, go=go)
    if found is None:
        return None
    value, end = found
    out += value
    return end


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
