"""Read what the daemon can reuse from SPIRE's own server configuration (HCL).

SPIRE's ``server.conf`` is HCL (version 1, as SPIRE parses it). This module reads the subset SPIRE
configurations use: blocks with labels (``server { ... }``, ``plugins { KeyManager "aws_kms"
{ plugin_data { ... } } }``), ``name = value`` attributes with strings, heredocs, numbers,
booleans, lists and objects, and ``#``, ``//`` and ``/* */`` comments. Every syntax error names
the file, the line and the column.

:func:`read_spire_server_config` returns the values the daemon shares with SPIRE:
``server.trust_domain`` and the ``aws_kms`` KeyManager's ``region``, ``key_identifier_file`` and
``key_identifier_value``, each with the line it was found on. It never returns
``access_key_id``/``secret_access_key``: the daemon takes credentials from the AWS chain only.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

__all__ = [
    "Attribute",
    "Block",
    "Body",
    "SpireConfigError",
    "SpireServerConfig",
    "SpireValue",
    "parse_hcl",
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


class _SyntaxError(Exception):
    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


# --- the tree -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attribute:
    """``name = value`` on ``line``."""

    name: str
    value: HclValue
    line: int


@dataclass(frozen=True, slots=True)
class Block:
    """``type "label" ... { body }`` on ``line``; ``name = { ... }`` is a block without labels."""

    type: str
    labels: tuple[str, ...]
    body: Body
    line: int


@dataclass(frozen=True, slots=True)
class Body:
    """The attributes and blocks between two braces (or of the whole file), in order."""

    items: tuple[Attribute | Block, ...] = field(default=())
    line: int = 1

    def blocks(self, type_: str) -> list[Block]:
        """Blocks of this type, including ``type = { ... }`` objects."""
        found: list[Block] = []
        for item in self.items:
            if isinstance(item, Block) and item.type == type_:
                found.append(item)
            elif isinstance(item, Attribute) and item.name == type_:
                if isinstance(item.value, Body):
                    found.append(Block(item.name, (), item.value, item.line))
                elif isinstance(item.value, list):
                    # HCL 1 reads `name = [{...}, {...}]` like repeated blocks.
                    found += [
                        Block(item.name, (), v, v.line) for v in item.value if isinstance(v, Body)
                    ]
        return found

    def attribute(self, name: str) -> Attribute | None:
        """The attribute ``name`` (not an object): the last one if it is repeated."""
        found = None
        for item in self.items:
            if (
                isinstance(item, Attribute)
                and item.name == name
                and not isinstance(item.value, Body)
            ):
                found = item
        return found


#: A parsed HCL value. Objects (``{ ... }``) are bodies, like blocks.
HclValue: TypeAlias = str | int | float | bool | list["HclValue"] | Body | None


# --- tokens -------------------------------------------------------------------------------------

_IDENT, _STRING, _NUMBER, _PUNCT, _EOF = "identifier", "string", "number", "punctuation", "end"
_PUNCTUATION = "{}[]=,"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    value: str | int | float
    line: int
    column: int


def _is_ident_start(char: str) -> bool:
    return char.isalpha() or char == "_"


def _is_ident_char(char: str) -> bool:
    return char.isalnum() or char in "_-."


# Go's escapes, as HCL 1 unquotes strings.
_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    '"': '"',
    "\\": "\\",
}


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.column = 1

    def _peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def _advance(self, count: int = 1) -> str:
        taken = self.text[self.pos : self.pos + count]
        for char in taken:
            if char == "\n":
                self.line += 1
                self.column = 1
            else:
                self.column += 1
        self.pos += count
        return taken

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        while True:
            self._skip_space_and_comments()
            line, column = self.line, self.column
            char = self._peek()
            if not char:
                out.append(_Token(_EOF, "", "", line, column))
                return out
            if char in _PUNCTUATION:
                self._advance()
                out.append(_Token(_PUNCT, char, char, line, column))
            elif char == '"':
                text = self._string()
                out.append(_Token(_STRING, text, text, line, column))
            elif char == "<" and self._peek(1) == "<":
                text = self._heredoc()
                out.append(_Token(_STRING, text, text, line, column))
            elif char.isdigit() or (char in "-+" and self._peek(1).isdigit()):
                raw, number = self._number()
                out.append(_Token(_NUMBER, raw, number, line, column))
            elif _is_ident_start(char):
                start = self.pos
                while _is_ident_char(self._peek()):
                    self._advance()
                word = self.text[start : self.pos]
                out.append(_Token(_IDENT, word, word, line, column))
            else:
                raise _SyntaxError(f"unexpected character {char!r}", line, column)

    def _skip_space_and_comments(self) -> None:
        while True:
            char = self._peek()
            if char and char in " \t\r\n\ufeff":
                self._advance()
            elif char == "#" or (char == "/" and self._peek(1) == "/"):
                while self._peek() and self._peek() != "\n":
                    self._advance()
            elif char == "/" and self._peek(1) == "*":
                line, column = self.line, self.column
                end = self.text.find("*/", self.pos + 2)
                if end < 0:
                    raise _SyntaxError("unterminated /* comment", line, column)
                self._advance(end + 2 - self.pos)
            else:
                return

    def _string(self) -> str:
        line, column = self.line, self.column
        self._advance()  # the opening quote
        out: list[str] = []
        while True:
            char = self._peek()
            if not char or char == "\n":
                raise _SyntaxError(
                    "unterminated string (a quoted string ends on its line)", line, column
                )
            if char == '"':
                self._advance()
                return "".join(out)
            if char == "\\":
                out.append(self._escape())
            elif char == "$" and self._peek(1) == "{":
                out.append(self._interpolation())
            else:
                out.append(self._advance())

    def _escape(self) -> str:
        line, column = self.line, self.column
        self._advance()  # the backslash
        char = self._peek()
        if char in _ESCAPES:
            self._advance()
            return _ESCAPES[char]
        if char in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[char]
            digits = self.text[self.pos + 1 : self.pos + 1 + width]
            if len(digits) == width and all(c in "0123456789abcdefABCDEF" for c in digits):
                self._advance(1 + width)
                try:
                    return chr(int(digits, 16))
                except ValueError:
                    pass
            raise _SyntaxError(f"invalid \\{char} escape in string", line, column)
        raise _SyntaxError(f"invalid escape \\{char or 'at end of file'} in string", line, column)

    def _interpolation(self) -> str:
        """``${...}`` is kept as written (SPIRE does not evaluate it), quotes inside included."""
        line, column = self.line, self.column
        start = self.pos
        self._advance(2)
        depth = 1
        while depth:
            char = self._peek()
            if not char or char == "\n":
                raise _SyntaxError("unterminated ${ in string", line, column)
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            self._advance()
        return self.text[start : self.pos]

    def _heredoc(self) -> str:
        line, column = self.line, self.column
        self._advance(2)
        indented = self._peek() == "-"
        if indented:
            self._advance()
        start = self.pos
        while _is_ident_char(self._peek()):
            self._advance()
        marker = self.text[start : self.pos]
        if not marker or self._peek() not in ("\n", "\r"):
            raise _SyntaxError(
                "a heredoc starts with <<NAME (or <<-NAME) and a line break", line, column
            )
        while self._peek() != "\n":
            self._advance()
        self._advance()
        lines: list[str] = []
        while True:
            if not self._peek():
                raise _SyntaxError(f"heredoc <<{marker} has no closing {marker} line", line, column)
            end = self.text.find("\n", self.pos)
            end = len(self.text) if end < 0 else end
            current = self.text[self.pos : end].rstrip("\r")
            self._advance(end - self.pos)
            if current.strip() == marker:
                break
            lines.append(current)
            if self._peek() == "\n":
                self._advance()
        body = "".join(f"{text}\n" for text in lines)
        return textwrap.dedent(body) if indented else body

    def _number(self) -> tuple[str, int | float]:
        line, column = self.line, self.column
        start = self.pos
        if self._peek() in "-+":
            self._advance()
        while (
            self._peek().isalnum()
            or self._peek() in "._"
            or (self._peek() in "-+" and self.text[self.pos - 1] in "eE")
        ):
            self._advance()
        raw = self.text[start : self.pos]
        try:
            if raw.lower().lstrip("-+").startswith("0x"):
                return raw, int(raw, 16)
            if any(c in raw for c in ".eE"):
                return raw, float(raw)
            return raw, int(raw)
        except ValueError:
            raise _SyntaxError(f"invalid number {raw!r}", line, column) from None


# --- parser -------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def _peek(self) -> _Token:
        return self.tokens[self.index]

    def _next(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != _EOF:
            self.index += 1
        return token

    def _is(self, token: _Token, punct: str) -> bool:
        return token.kind == _PUNCT and token.text == punct

    @staticmethod
    def _describe(token: _Token) -> str:
        if token.kind == _EOF:
            return "end of file"
        if token.kind == _STRING:
            return "a string"
        return repr(token.text)

    def body(self, closing: str | None, line: int) -> Body:
        items: list[Attribute | Block] = []
        while True:
            token = self._peek()
            if closing is None and token.kind == _EOF:
                return Body(tuple(items), line)
            if closing is not None and self._is(token, closing):
                self._next()
                return Body(tuple(items), line)
            if token.kind == _EOF:
                raise _SyntaxError(
                    f"missing {closing!r} for the block opened on line {line}",
                    token.line,
                    token.column,
                )
            if self._is(token, ","):
                self._next()  # HCL 1 lets object members be separated by commas
                continue
            items.append(self._item())

    def _key(self) -> _Token:
        token = self._next()
        if token.kind not in (_IDENT, _STRING):
            raise _SyntaxError(
                f"expected a name, got {self._describe(token)}", token.line, token.column
            )
        return token

    def _item(self) -> Attribute | Block:
        first = self._key()
        labels: list[str] = []
        while True:
            token = self._peek()
            if self._is(token, "="):
                if labels:
                    raise _SyntaxError(
                        f"unexpected '=' after the block labels of {first.text!r}",
                        token.line,
                        token.column,
                    )
                self._next()
                return Attribute(str(first.value), self.value(), first.line)
            if self._is(token, "{"):
                self._next()
                body = self.body("}", token.line)
                return Block(str(first.value), tuple(labels), body, first.line)
            if token.kind in (_IDENT, _STRING):
                labels.append(str(self._next().value))
                continue
            raise _SyntaxError(
                f"expected '=' or '{{' after {first.text!r}, got {self._describe(token)}",
                token.line,
                token.column,
            )

    def value(self) -> HclValue:
        token = self._next()
        if token.kind in (_STRING, _NUMBER):
            return token.value
        if token.kind == _IDENT:
            if token.text in ("true", "false"):
                return token.text == "true"
            if token.text == "null":
                return None
            raise _SyntaxError(
                f"expected a value, got {token.text!r} (strings are quoted)",
                token.line,
                token.column,
            )
        if self._is(token, "["):
            return self._list(token)
        if self._is(token, "{"):
            return self.body("}", token.line)
        raise _SyntaxError(
            f"expected a value, got {self._describe(token)}", token.line, token.column
        )

    def _list(self, opening: _Token) -> list[HclValue]:
        values: list[HclValue] = []
        while True:
            token = self._peek()
            if self._is(token, "]"):
                self._next()
                return values
            if token.kind == _EOF:
                raise _SyntaxError(
                    f"missing ']' for the list opened on line {opening.line}",
                    token.line,
                    token.column,
                )
            values.append(self.value())
            token = self._peek()
            if self._is(token, ","):
                self._next()
            elif not self._is(token, "]"):
                raise _SyntaxError(
                    f"expected ',' or ']' in list, got {self._describe(token)}",
                    token.line,
                    token.column,
                )


def parse_hcl(text: str, path: Path | str = "<string>") -> Body:
    """Parse HCL ``text``; raise :class:`SpireConfigError` naming ``path``, line and column."""
    try:
        return _Parser(_Lexer(text).tokens()).body(None, 1)
    except _SyntaxError as exc:
        raise SpireConfigError(path, f"invalid HCL: {exc.message}", exc.line, exc.column) from None


# --- SPIRE's settings ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpireValue:
    """A string read from SPIRE's configuration, and where."""

    value: str
    line: int


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
        return f"spire_server_config {self.path} line {value.line}"


def _string(path: Path, body: Body, name: str, where: str) -> SpireValue | None:
    attribute = body.attribute(name)
    if attribute is None or attribute.value is None or attribute.value == "":
        return None  # SPIRE reads an empty string as unset
    if not isinstance(attribute.value, str):
        raise SpireConfigError(path, f"{where}{name} must be a string", attribute.line)
    if "$" in attribute.value:
        raise SpireConfigError(
            path,
            f"{where}{name} {attribute.value!r} refers to an environment variable "
            "(spire-server -expandEnv); the daemon does not expand it: set "
            f"{name} in the daemon's settings instead",
            attribute.line,
        )
    return SpireValue(attribute.value, attribute.line)


def _one(path: Path, blocks: list[Block], what: str) -> Block | None:
    if len(blocks) > 1:
        lines = ", ".join(str(b.line) for b in blocks)
        raise SpireConfigError(
            path, f"{what} is defined more than once (lines {lines})", blocks[1].line
        )
    return blocks[0] if blocks else None


def _enabled(path: Path, block: Block) -> bool:
    attribute = block.body.attribute("enabled")
    if attribute is None or attribute.value is None:
        return True
    if not isinstance(attribute.value, bool):
        raise SpireConfigError(
            path, 'KeyManager "aws_kms" enabled must be true or false', attribute.line
        )
    return attribute.value


def _scalar(path: Path, body: Body, name: str, where: str) -> SpireValue | None:
    """A string or number attribute as text (HCL 1 decodes a number into a string field)."""
    attribute = body.attribute(name)
    if attribute is None or attribute.value is None or attribute.value == "":
        return None
    value = attribute.value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SpireConfigError(path, f"{where}{name} must be a string", attribute.line)
    return _string(path, Body((Attribute(name, str(value), attribute.line),)), name, where)


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


def _health(path: Path, root: Body) -> SpireValue | None:
    block = _one(path, root.blocks("health_checks"), "the health_checks block")
    if block is None:
        return None
    where = "health_checks."
    enabled = block.body.attribute("listener_enabled")
    if enabled is None or enabled.value is not True:
        if enabled is not None and not isinstance(enabled.value, bool):
            raise SpireConfigError(
                path, f"{where}listener_enabled must be true or false", enabled.line
            )
        return None
    address = _scalar(path, block.body, "bind_address", where)
    port = _scalar(path, block.body, "bind_port", where)
    live = _scalar(path, block.body, "live_path", where)
    if port is not None and not (port.value.isascii() and port.value.isdigit()):
        raise SpireConfigError(
            path, f"{where}bind_port {port.value!r} is not a port number", port.line
        )
    if live is not None and not live.value.startswith("/"):
        raise SpireConfigError(
            path, f"{where}live_path {live.value!r} must start with /", live.line
        )
    url = health_live_url(
        address.value if address else "", port.value if port else "", live.value if live else ""
    )
    return SpireValue(url, enabled.line)


def read_spire_server_config(path: Path) -> SpireServerConfig:
    """Read ``server.trust_domain`` and the ``aws_kms`` KeyManager's settings from SPIRE's file.

    Raise :class:`SpireConfigError` when the file cannot be read or parsed, or holds no enabled
    ``KeyManager "aws_kms"`` (this server then keeps no keys in AWS KMS for the daemon to keep).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpireConfigError(path, f"cannot read it: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpireConfigError(path, f"not UTF-8 text (byte {exc.start})") from None
    root = parse_hcl(text, path)

    trust_domain = None
    server = _one(path, root.blocks("server"), "the server block")
    if server is not None:
        trust_domain = _string(path, server.body, "trust_domain", "server.")

    managers = [
        block
        for plugins in root.blocks("plugins")
        for block in plugins.body.blocks("KeyManager")
        if block.labels[:1] == ("aws_kms",)
    ]
    # HCL 1 also reads `KeyManager { aws_kms { ... } }`.
    managers += [
        Block("KeyManager", ("aws_kms",), inner.body, inner.line)
        for plugins in root.blocks("plugins")
        for block in plugins.body.blocks("KeyManager")
        if not block.labels
        for inner in block.body.blocks("aws_kms")
    ]
    managers = [m for m in managers if _enabled(path, m)]
    manager = _one(path, managers, 'KeyManager "aws_kms"')
    if manager is None:
        raise SpireConfigError(
            path,
            'no enabled KeyManager "aws_kms" in the plugins block: this SPIRE server does not '
            "keep its keys in AWS KMS",
        )
    if manager.body.attribute("plugin_data_file") is not None:
        attribute = manager.body.attribute("plugin_data_file")
        assert attribute is not None
        raise SpireConfigError(
            path,
            'KeyManager "aws_kms" reads its settings from plugin_data_file, which the daemon '
            "does not follow: set region and key_identifier_file (or key_identifier_value) in "
            "the daemon's settings",
            attribute.line,
        )
    data = _one(path, manager.body.blocks("plugin_data"), 'KeyManager "aws_kms" plugin_data')
    where = 'KeyManager "aws_kms" plugin_data: '
    region = file = value = None
    discovery: bool | None = None
    if data is not None:
        region = _string(path, data.body, "region", where)
        file = _string(path, data.body, "key_identifier_file", where)
        value = _string(path, data.body, "key_identifier_value", where)
        flag = data.body.attribute("enable_tag_based_key_discovery")
        if flag is not None and isinstance(flag.value, bool):
            discovery = flag.value
    return SpireServerConfig(
        path, trust_domain, region, file, value, discovery, _health(path, root)
    )
