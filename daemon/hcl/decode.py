"""Decoding helpers: the library's key matching, os.Expand, and the printer."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from daemon.hcl.nodes import Item, Literal, Node, ObjectList, ObjectNode

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
