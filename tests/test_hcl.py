"""The HCL1 reader on its own: values, structure, errors with positions, the inputs that used to
hang or crash, and two properties over arbitrary text (it terminates, in linear time, raising
only HclError). tests/test_hcl_oracle.py compares it with the real library."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import hcl


class Hung(Exception):
    """The reader ran past its time bound: it would have hung."""


@contextmanager
def bounded(seconds: float = 5.0) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (an input that used to loop forever fails the test
    instead of freezing the run)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def items(text: str) -> list[tuple[list[str], object]]:
    """Each item's keys and its value (a literal's text, else the node's type name)."""
    out: list[tuple[list[str], object]] = []
    with bounded():
        parsed = hcl.parse(text, "t.conf")
    for item in parsed.items:
        value = item.value
        if isinstance(value, hcl.Literal):
            token = value.token
            shown = token.string() if token.kind in ("STRING", "HEREDOC") else token.text
        else:
            shown = type(value).__name__
        out.append(([k.string() for k in item.keys], shown))
    return out


def error(text: str) -> hcl.HclError:
    with bounded(), pytest.raises(hcl.HclError) as caught:
        hcl.parse(text, "t.conf")
    return caught.value


# --- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value"),
    [
        (r'"a\tb"', "a\tb"),
        (r'"\101\x41\u0041\U00000041"', "AAAA"),
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        ('"${var.x\n}"', "${var.x\n}"),  # a newline inside ${...} is kept
        ('"${"quoted"}"', '${"quoted"}'),  # and so are quotes
        ('"ünï"', "ünï"),
    ],
)
def test_string_escapes_are_hcl1s(source: str, value: str) -> None:
    assert items(f"x = {source}\n") == [(["x"], value)]


@pytest.mark.parametrize("bad", [r'"\q"', r'"\1"', r'"\xZZ"', r'"\u12"'])
def test_bad_escapes_are_errors_with_a_position(bad: str) -> None:
    exc = error(f"x = {bad}\n")
    assert (exc.path, exc.line) == ("t.conf", 1)
    assert str(exc).startswith("t.conf:1:")


def test_an_octal_escape_over_255_scans_but_has_no_value() -> None:
    # the scanner only checks for three octal digits; unquoting then fails, as in the library
    (item,) = hcl.parse('x = "\\400"\n').items
    assert isinstance(item.value, hcl.Literal)
    with pytest.raises(hcl.HclError, match="malformed string"):
        item.value.token.string()


def test_heredoc_keeps_its_final_newline() -> None:
    assert items("x = <<EOF\nhello\nworld\nEOF\n") == [(["x"], "hello\nworld\n")]


def test_indented_heredoc_strips_the_closing_markers_indentation() -> None:
    # HCL1 removes as many leading characters as the closing marker is indented by, not the
    # smallest indentation of the body.
    assert items("x = <<-EOF\n    a\n  b\n  EOF\n") == [(["x"], "  a\nb\n")]


def test_a_heredoc_marker_then_a_lone_cr_is_an_error_not_a_hang() -> None:
    exc = error("x = <<EOF\r")
    assert "heredoc anchor" in str(exc)
    assert (exc.line, exc.column) == (1, 5)


@pytest.mark.parametrize("text", ["a = 1", "a = 12", "a = 1.5e", "a = true", 'a = "x"'])
def test_a_value_as_the_last_token_without_a_newline_parses(text: str) -> None:
    assert items(text)[0][0] == ["a"]


def test_an_identifier_as_the_last_token_is_the_librarys_error_not_a_hang() -> None:
    exc = error("a = b")
    assert str(exc) == "t.conf:1:5: Unknown token: IDENT"


# --- structure ------------------------------------------------------------------------------------


def test_repeated_keys_are_all_kept_in_order() -> None:
    parsed = hcl.parse("a = 1\nb = 2\na = 3\n")
    assert [(i.keys[0].string(), i.value.token.text) for i in parsed.items] == [  # type: ignore[union-attr]
        ("a", "1"),
        ("b", "2"),
        ("a", "3"),
    ]


def test_block_with_labels_has_several_keys() -> None:
    assert items('a "b" c {}\n') == [(["a", "b", "c"], "ObjectNode")]


def test_filter_items_matches_the_first_key_ignoring_case() -> None:
    parsed = hcl.parse("Trust_Domain = 1\nTRUST_DOMAIN = 2\nother = 3\nx trust_domain {}\n")
    found = hcl.filter_items(parsed.items, "trust_domain")
    assert [i.value.token.text for i in found] == ["1", "2"]  # type: ignore[union-attr]
    assert all(i.keys == [] for i in found)


@pytest.mark.parametrize(
    ("key", "name", "equal"),
    [
        ("Region", "region", True),
        ("REGION", "region", True),
        ("\u212aey", "key", True),  # KELVIN SIGN folds to k in Go
        ("\u017ferver", "server", True),  # LATIN SMALL LONG S folds to s
        ("regio", "region", False),
        ("region_", "region", False),
        ("r\u0435gion", "region", False),  # a Cyrillic e is not an e
    ],
)
def test_fold_equal_is_gos_equal_fold(key: str, name: str, equal: bool) -> None:
    assert hcl.fold_equal(key, name) is equal


def test_json_is_detected_by_its_first_character_and_flattened() -> None:
    # objects whose members are all objects become one item with several keys, as HCL blocks
    # with labels would; an object with a scalar member stays an object
    parsed = hcl.parse(
        '  \n{"plugins": {"KeyManager": {"aws_kms": {"plugin_data": {}}}},'
        ' "server": {"trust_domain": "x"}}'
    )
    plugins, server = parsed.items
    assert [k.string() for k in plugins.keys] == ["plugins", "KeyManager", "aws_kms", "plugin_data"]
    assert [k.string() for k in server.keys] == ["server"]
    assert isinstance(server.value, hcl.ObjectNode)
    (domain,) = server.value.body.items
    assert isinstance(domain.value, hcl.Literal) and domain.value.token.string() == "x"


def test_json_null_is_an_empty_string() -> None:
    (item,) = hcl.parse('{"a": null}').items
    assert isinstance(item.value, hcl.Literal)
    assert item.value.token.string() == ""


def test_a_trailing_assignment_with_nothing_after_it_is_dropped() -> None:
    assert items("a = 1\nb =") == [(["a"], "1")]


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("a = \n}", (2, 1), "Unknown token: RBRACE"),
        ('a = "abc', (1, 5), "literal not terminated"),
        ("/* x", (1, 1), "comment not terminated"),
        ("a = <<EOF\nno end", (1, 5), "heredoc not terminated"),
        ("a = 0x", (1, 7), "illegal hexadecimal number"),
        ("ok = 1\n\n  x = [1 2]\n", (3, 10), "expected comma or list end"),
        ('{"a": 1,, }', (1, 9), ""),
    ],
)
def test_errors_name_file_line_and_column(text: str, where: tuple[int, int], says: str) -> None:
    exc = error(text)
    assert (exc.line, exc.column) == where
    assert str(exc).startswith(f"t.conf:{where[0]}:{where[1]}: ")
    assert says in str(exc)


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 5000 + "]" * 5000,
        "a = " + "{b = " * 5000 + "}" * 5000,
        "a " + "b { " * 5000 + "}" * 5000,
        "{" + '"a": {' * 5000 + "}" * 5001,
    ],
    ids=["lists", "objects", "blocks", "json"],
)
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(text: str) -> None:
    exc = error(text)
    assert f"nested more than {hcl.MAX_DEPTH} levels deep" in str(exc)


def test_nesting_within_the_limit_parses() -> None:
    depth = hcl.MAX_DEPTH - 1
    assert items("a = " + "[" * depth + "]" * depth + "\n")[0][0] == ["a"]


# --- expand_env -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$A-${A}", "x-x"),
        ("$UNSET.", "."),
        ("$$", "$"),  # os.Expand: $$ is the special parameter $, which SPIRE maps to itself
        ("cost $5", "cost "),  # $5 is a special parameter, unset
        ("${}", ""),  # bad syntax: "${}" is eaten
        ("${A", "A"),  # no closing brace: "${" is eaten
        ("${A}${", "x"),
        ("a$", "a$"),  # a $ at the very end stays
        ("$A_B1c", "y"),
        ("$!x", "x"),
    ],
)
def test_expand_env_is_gos_os_expand(text: str, expanded: str) -> None:
    assert hcl.expand_env(text, {"A": "x", "A_B1c": "y"}) == expanded


# --- properties -----------------------------------------------------------------------------------

_ALPHABET = st.sampled_from(
    [*'{}[]=",\n#/*<-.0x1e\r\t$\\:ab_ ', "${", "<<EOF\n", "\nEOF", "//", "/*", "*/", "null"]
)
_TEXTS = st.one_of(
    st.lists(_ALPHABET, max_size=80).map("".join),
    st.text(max_size=80),
    st.lists(_ALPHABET, max_size=80).map(lambda parts: "{" + "".join(parts)),
)


@settings(max_examples=1500, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXTS)
def test_any_text_parses_or_raises_hcl_error_only(text: str) -> None:
    try:
        with bounded(2.0):
            parsed = hcl.parse(text, "f.conf")
    except hcl.HclError as exc:
        assert exc.line >= 1 and exc.column >= 0
        assert str(exc).startswith("f.conf:")
    else:
        assert isinstance(parsed, hcl.ObjectList)
        for item in parsed.items:
            # what parses renders, and the rendering parses again (SPIRE's plugin_data path)
            if item.value is not None:
                hcl.render(item.value)


def _families(n: int) -> dict[str, str]:
    return {
        "numbers": "a = " + "1" * n,
        "identifiers": "a" * n,
        "strings": 'a = "' + "\\n" * (n // 2) + '"',
        "open string": 'a = "' + "x" * n,
        "interpolation": 'a = "${' + "{" * n,
        "heredoc": "a = <<EOF\n" + "EO\n" * (n // 3),
        "comments": "/*" + "*" * n,
        "line comments": "#" * n,
        "lists": "a = [" + "1, " * (n // 3) + "]",
        "json": '{"a": [' + "1, " * (n // 3) + "]}",
        "json strings": '{"a": "' + "\\u0041" * (n // 6) + '"}',
        "items": "a = 1\n" * (n // 6),
        "blocks": "a b c d " * (n // 8),
        "nesting": "a = " + "[" * n,
    }


@pytest.mark.parametrize("family", sorted(_families(10)))
def test_work_is_linear_in_the_input(family: str) -> None:
    # hcl.work counts the characters the scanner reads: an exact measure of time that does not
    # flake on a busy machine.
    for n in (1_000, 10_000, 100_000):
        text = _families(n)[family]
        with bounded():
            hcl.work(text)
        assert hcl.work(text) <= 2 * len(text) + 16, (family, n, hcl.work(text), len(text))
