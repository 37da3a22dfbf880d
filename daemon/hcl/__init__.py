"""HCL1, read the way SPIRE reads its configuration: the HCL library it pins
(github.com/hashicorp/hcl v1.0.1-vault-7), its JSON form, and the decoding rules SPIRE relies on.

This package knows nothing of SPIRE; :mod:`daemon.spire_config` takes SPIRE's settings from what
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

Modules: :mod:`~daemon.hcl.nodes` (tokens, items, errors), :mod:`~daemon.hcl.strings`
(characters and string values), :mod:`~daemon.hcl.scanner` and :mod:`~daemon.hcl.parser` (HCL),
:mod:`~daemon.hcl.json` (JSON), :mod:`~daemon.hcl.decode` (key matching, os.Expand, printing).
"""

from daemon.hcl.decode import expand_env, filter_items, fold_equal, render
from daemon.hcl.nodes import (
    MAX_DEPTH,
    HclError,
    Item,
    ListNode,
    Literal,
    Node,
    ObjectList,
    ObjectNode,
    Token,
)
from daemon.hcl.parser import parse, work

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
