"""SPIRE's contract on AWS KMS (contract §1-§3): names, encodings, tags and server IDs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import spire
from daemon.spire import ContractError
from tests.strategies import MALFORMED_LAST_UPDATES
from tests.world import TD

SERVER = "0f8e4c2a-6b1d-4e3f-9a7c-5d2b8e1f3a6c"
UUID = "0f8e4c2a-6b1d-4e3f-9a7c-5d2b8e1f3a6c"
UUID_HEX = UUID.replace("-", "")

modest = settings(max_examples=200, deadline=None)

# Key IDs made of characters SPIRE may use, without "_" so that no "_2e"/"_2b" appears by chance.
raw_key_ids = st.text(alphabet=st.sampled_from("abcXYZ019-.+"), min_size=1, max_size=40)
server_ids = st.text(alphabet=st.sampled_from("abcXYZ019/_-"), min_size=1, max_size=40)
trust_domains = st.text(alphabet=st.sampled_from("abcz09.-_"), min_size=1, max_size=40)


# --- A.2 key-ID encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("bundle-acme-foo.bar+rsa", "bundle-acme-foo_2ebar_2brsa"),
        ("x509-CA-A", "x509-CA-A"),
        ("JWT-Signer-B", "JWT-Signer-B"),
        ("a.b.c", "a_2eb_2ec"),
        ("a+b+c", "a_2bb_2bc"),
        ("..++", "_2e_2e_2b_2b"),
        (".+", "_2e_2b"),
        ("", ""),
    ],
)
def test_key_id_encoding(raw: str, encoded: str) -> None:
    assert spire.encode_key_id(raw) == encoded
    assert spire.decode_key_id(encoded) == raw


@pytest.mark.parametrize(
    "untouched", ["under_score", "_2f", "_5f", "_2E", "_2B", "a/b", "a b", "_2", "_"]
)
def test_encoding_changes_nothing_else(untouched: str) -> None:
    assert spire.encode_key_id(untouched) == untouched
    assert spire.decode_key_id(untouched) == untouched


def test_decoding_is_literal_like_spire() -> None:
    # SPIRE decodes every "_2e" and "_2b", even one that was in the raw key ID: the same here.
    assert spire.decode_key_id("a_2eb_2bc") == "a.b+c"
    assert spire.decode_key_id("_2e_2b") == ".+"
    assert spire.decode_key_id("x_2e_2e") == "x.."


@modest
@given(raw_key_ids)
def test_encoding_round_trips(raw: str) -> None:
    encoded = spire.encode_key_id(raw)
    assert "." not in encoded
    assert "+" not in encoded
    assert spire.decode_key_id(encoded) == raw


# --- A.2 alias names and ownership -------------------------------------------------------------


def test_alias_name_layout() -> None:
    name = spire.alias_name(TD, SERVER, "bundle-acme-foo.bar+rsa")
    assert name == f"alias/SPIRE_SERVER/example_org/{SERVER}/bundle-acme-foo_2ebar_2brsa"
    assert spire.parse_alias(name, TD, SERVER) == "bundle-acme-foo.bar+rsa"


def test_alias_name_with_nested_trust_domain() -> None:
    assert (
        spire.alias_name("test.example.org", "srv", "x509-CA-A")
        == "alias/SPIRE_SERVER/test_example_org/srv/x509-CA-A"
    )


def test_prefixes_include_trailing_slash() -> None:
    assert spire.alias_prefix(TD, "abc") == "alias/SPIRE_SERVER/example_org/abc/"
    assert spire.trust_domain_alias_prefix(TD) == "alias/SPIRE_SERVER/example_org/"
    assert spire.ALIAS_ROOT == "alias/SPIRE_SERVER/"


def test_trust_domain_prefix_trap_not_owned() -> None:
    # example_org must not catch example_org2 (SPIRE's own disposal does, the daemon must not)
    other = spire.alias_name("example.org2", SERVER, "x509-CA-A")
    assert other.startswith("alias/SPIRE_SERVER/example_org")
    assert spire.parse_alias(other, TD, SERVER) is None
    assert not other.startswith(spire.trust_domain_alias_prefix(TD))


def test_server_prefix_trap_not_owned() -> None:
    abcd = spire.alias_name(TD, "abcd", "x509-CA-A")
    assert spire.parse_alias(abcd, TD, "abc") is None
    assert spire.parse_alias(abcd, TD, "abcd") == "x509-CA-A"
    abc = spire.alias_name(TD, "abc", "x509-CA-A")
    assert spire.parse_alias(abc, TD, "abcd") is None


@pytest.mark.parametrize(
    "name",
    [
        "alias/SPIRE_SERVER/wrong_prefix",
        "alias/SPIRE_SERVER/example_org",
        "alias/SPIRE_SERVER/example_org/",
        "alias/SPIRE_SERVER/example_org/abc",
        "alias/SPIRE_SERVER/example_org/abc/",  # the prefix alone names no key
        "alias/SPIRE_SERVER/example.org/abc/x509-CA-A",  # raw TD: not SPIRE's form
        "alias/spire_server/example_org/abc/x509-CA-A",  # case-sensitive
        "alias/SPIRE_SERVER/EXAMPLE_ORG/abc/x509-CA-A",
        "alias/SPIRE_SERVER/example_org/ABC/x509-CA-A",
        "SPIRE_SERVER/example_org/abc/x509-CA-A",
        "alias/aws/kms",
        "alias/team/example_org/abc/x509-CA-A",
        "",
    ],
)
def test_foreign_aliases_ignored(name: str) -> None:
    assert spire.parse_alias(name, TD, "abc") is None


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("a//b/", "alias/SPIRE_SERVER/example_org/a/b/x509-CA-A"),
        ("/a", "alias/SPIRE_SERVER/example_org/a/x509-CA-A"),
        ("a/", "alias/SPIRE_SERVER/example_org/a/x509-CA-A"),
        ("a///", "alias/SPIRE_SERVER/example_org/a/x509-CA-A"),
        ("team/a", "alias/SPIRE_SERVER/example_org/team/a/x509-CA-A"),
    ],
)
def test_alias_names_are_joined_as_go_path_join_joins_them(server: str, expected: str) -> None:
    """SPIRE builds alias names with path.Join: a key_identifier_value with repeated, leading or
    trailing slashes gets the cleaned name, and the daemon must compute the same one."""
    assert spire.alias_name(TD, server, "x509-CA-A") == expected
    assert spire.parse_alias(expected, TD, server) == "x509-CA-A"
    assert spire.alias_prefix(TD, server) == expected.removesuffix("x509-CA-A")


@pytest.mark.parametrize(
    ("parts", "joined"),
    [
        (("a", "b"), "a/b"),
        (("a/", "/b/"), "a/b"),
        (("", "a", ""), "a"),
        (("a/./b",), "a/b"),
        (("a/../b",), "b"),
        (("/..",), "/"),
        (("..", "a"), "../a"),
        (("",), ""),
        (("/",), "/"),
    ],
)
def test_join_path_is_go_path_join(parts: tuple[str, ...], joined: str) -> None:
    assert spire.join_path(*parts) == joined


def test_a_server_never_owns_the_aliases_of_a_server_below_it() -> None:
    name = spire.alias_name(TD, "a/b", "x509-CA-A")
    assert spire.parse_alias(name, TD, "a") is None
    assert spire.parse_alias(name, TD, "a/b") == "x509-CA-A"


@modest
@given(trust_domains, server_ids, raw_key_ids)
def test_alias_round_trips(td: str, server: str, raw: str) -> None:
    name = spire.alias_name(td, server, raw)
    assert name.startswith(spire.alias_prefix(td, server))
    assert spire.is_spire_alias(name)
    assert spire.parse_alias(name, td, server) == raw


@modest
@given(trust_domains, server_ids, st.text(alphabet="abc09_-", min_size=1, max_size=5), raw_key_ids)
def test_longer_server_id_never_owned(td: str, server: str, suffix: str, raw: str) -> None:
    # a server whose ID merely starts with ours is another server
    assert spire.parse_alias(spire.alias_name(td, server + suffix, raw), td, server) is None


@modest
@given(trust_domains, st.text(alphabet="abc09_-", min_size=1, max_size=5), raw_key_ids)
def test_longer_trust_domain_never_owned(td: str, suffix: str, raw: str) -> None:
    assert spire.parse_alias(spire.alias_name(td + suffix, SERVER, raw), td, SERVER) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alias/SPIRE_SERVER/example_org/abc/x509-CA-A", True),
        ("alias/SPIRE_SERVER/", True),
        ("alias/SPIRE_SERVERX/example_org", False),
        ("alias/SPIRE_SERVER", False),
        ("alias/spire_server/example_org/abc/x", False),
        ("alias/team/app", False),
    ],
)
def test_is_spire_alias(name: str, expected: bool) -> None:
    assert spire.is_spire_alias(name) is expected


def test_key_description() -> None:
    assert (
        spire.key_description("test.example.org", "bundle-acme-foo.bar+rsa")
        == "SPIRE_SERVER_KEY/test_example_org/bundle-acme-foo.bar+rsa"
    )


# --- A.1 trust domain ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "sanitized"),
    [
        ("test.example.org", "test_example_org"),
        ("example.org", "example_org"),
        ("example_org", "example_org"),
        ("a-b.c_d", "a-b_c_d"),
        ("localhost", "localhost"),
        ("a..b", "a__b"),
    ],
)
def test_sanitize_trust_domain(raw: str, sanitized: str) -> None:
    assert spire.sanitize_trust_domain(raw) == sanitized


@modest
@given(st.text(max_size=50))
def test_sanitize_replaces_dots_only(raw: str) -> None:
    sanitized = spire.sanitize_trust_domain(raw)
    assert len(sanitized) == len(raw)
    assert "." not in sanitized
    for before, after in zip(raw, sanitized, strict=True):
        assert after == ("_" if before == "." else before)


@pytest.mark.parametrize(
    "td", ["example.org", "test.example.org", "a_b-c.d", "localhost", "x" * 255, "0.1"]
)
def test_valid_trust_domains(td: str) -> None:
    assert spire.validate_trust_domain(td) == td


@pytest.mark.parametrize(
    "td",
    [
        "",
        "Example.org",
        "exa mple.org",
        "example.org/",
        "spiffe://example.org",
        "example.org:8443",
        "x" * 256,
        "é.org",
        "example.org\n",
    ],
)
def test_invalid_trust_domains(td: str) -> None:
    with pytest.raises(ContractError):
        spire.validate_trust_domain(td)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.org", "example.org"),
        ("spiffe://example.org", "example.org"),
        ("spiffe://example.org/spire/server", "example.org"),
        ("spiffe://a_b-c.d/x.y_z-1", "a_b-c.d"),
    ],
)
def test_trust_domain_from_string_as_go_spiffe(value: str, expected: str) -> None:
    """go-spiffe's TrustDomainFromString: a name, or the trust domain of a SPIFFE ID."""
    assert spire.parse_trust_domain(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://",
        "spiffe:/example.org",
        "SPIFFE://example.org",
        "https://example.org",
        "spiffe://Example.org",
        "spiffe://example.org/",
        "spiffe://example.org//x",
        "spiffe://example.org/./x",
        "spiffe://example.org/..",
        "spiffe://example.org/a b",
        "spiffe://example.org:443",
    ],
)
def test_trust_domain_from_string_rejects_what_go_spiffe_rejects(value: str) -> None:
    with pytest.raises(ContractError):
        spire.parse_trust_domain(value)


# --- A.3 / A.4 spire-last-update ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("1767225600", 1767225600), ("9", 9), (str(2**63 - 1), 2**63 - 1)],
)
def test_parse_last_update_valid(value: str, expected: int) -> None:
    assert spire.parse_last_update(value) == expected


@pytest.mark.parametrize("value", MALFORMED_LAST_UPDATES)
def test_parse_last_update_malformed(value: str) -> None:
    assert spire.parse_last_update(value) is None


def test_parse_last_update_missing() -> None:
    assert spire.parse_last_update(None) is None


@modest
@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_last_update_round_trips(seconds: int) -> None:
    assert spire.parse_last_update(spire.format_last_update(seconds)) == seconds


def test_format_last_update() -> None:
    assert spire.format_last_update(1767225600) == "1767225600"
    assert spire.format_last_update(0) == "0"
    with pytest.raises(ContractError):
        spire.format_last_update(-1)


# --- A.1 server ID from key_identifier_file -----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        UUID,
        UUID.upper(),
        UUID_HEX,
        UUID_HEX.upper(),
        "{" + UUID + "}",
        "{" + UUID.upper() + "}",
        "urn:uuid:" + UUID,
        # gofrs/uuid, which SPIRE uses, also takes the 32-hex form braced or as a URN
        "{" + UUID_HEX + "}",
        "urn:uuid:" + UUID_HEX,
    ],
)
def test_server_id_file_forms(content: str) -> None:
    parsed = spire.parse_server_id_file_content(content)
    assert parsed.server_id == UUID


@pytest.mark.parametrize("content", [UUID + "\n", UUID.upper() + "\r\n", " " + UUID, UUID + "\t"])
def test_server_id_file_with_white_space_is_refused_as_spire_refuses_it(content: str) -> None:
    """SPIRE parses the whole file (gofrs/uuid FromString, nothing trimmed): a trailing newline
    stops it from starting, so the daemon must not keep that server's keys alive either."""
    with pytest.raises(ContractError, match="SPIRE parses the whole content") as raised:
        spire.parse_server_id_file_content(content)
    assert "printf '%s'" in str(raised.value)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "\n",
        "not-a-uuid",
        UUID[:-1],
        UUID + "0",
        UUID_HEX[:-1],
        UUID_HEX + "0",
        " " + UUID,
        UUID + " ",
        UUID + "\n\n",
        "\n" + UUID,
        UUID.replace("-", "_"),
        UUID[:8] + UUID[9:13] + "-" + UUID[8] + UUID[13:],  # misplaced hyphen
        UUID.replace("0", "g", 1),
        "{" + UUID,
        UUID + "}",
        "(" + UUID + ")",
        "{{" + UUID + "}}",
        "URN:UUID:" + UUID,  # gofrs/uuid's prefix is case-sensitive
        "urn:uuid:{" + UUID + "}",
        "uuid:" + UUID,
        UUID.replace("0", "０"),  # fullwidth digit
        UUID + "\x00",
    ],
)
def test_server_id_file_garbage_rejected(content: str) -> None:
    with pytest.raises(ContractError):
        spire.parse_server_id_file_content(content)


def test_read_server_id_file(tmp_path: Path) -> None:
    path = tmp_path / "server_id"
    path.write_text(UUID.upper())
    assert spire.read_server_id_file(path) == spire.ParsedServerId(UUID)


def test_read_server_id_file_with_newline_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "server_id"
    path.write_text("urn:uuid:" + UUID + "\n")
    with pytest.raises(ContractError, match=f"{path}.*does not start with this file either"):
        spire.read_server_id_file(path)


def test_missing_server_id_file_is_an_error_and_never_created(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "server_id"
    with pytest.raises(ContractError, match=str(path)):
        spire.read_server_id_file(path)
    assert not path.exists()
    assert not path.parent.exists()


def test_garbage_server_id_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "server_id"
    path.write_text("garbage\n")
    with pytest.raises(ContractError, match=str(path)):
        spire.read_server_id_file(path)
    assert path.read_text() == "garbage\n"  # SPIRE's file is never rewritten


def test_unreadable_server_id_file(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match=str(tmp_path)):
        spire.read_server_id_file(tmp_path)  # a directory


def test_non_utf8_server_id_file(tmp_path: Path) -> None:
    path = tmp_path / "server_id"
    path.write_bytes(b"\xff\xfe" + UUID.encode())
    with pytest.raises(ContractError, match=str(path)):
        spire.read_server_id_file(path)


@modest
@given(st.uuids())
def test_any_uuid_renders_lowercase_canonical(value: object) -> None:
    text = str(value)
    for content in (text, text.upper(), text.replace("-", ""), "{" + text + "}"):
        assert spire.parse_server_id_file_content(content).server_id == text


# --- A.1 key_identifier_value -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "server-1",
        "a/b_c-D9",
        "A" * 256,
        "alias/awsx",
        "alias/aws",
        "aws/x",
        UUID,
    ],
)
def test_valid_server_id_values(value: str) -> None:
    assert spire.validate_server_id_value(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a@b",
        "@",
        "A" * 257,
        "alias/aws/x",
        "alias/aws/",
        "a[b",
        "a]b",
        "a^b",
        "a`b",
        "a\\b",  # also between Z and a: SPIRE's own A-z range lets these through
        "a b",
        "a.b",
        "a+b",
        "é",
        "abc\n",
        "a:b",
    ],
)
def test_invalid_server_id_values(value: str) -> None:
    with pytest.raises(ContractError):
        spire.validate_server_id_value(value)


def test_server_id_value_length_counts_bytes() -> None:
    assert len(("A" * 257).encode()) == 257
    with pytest.raises(ContractError, match="256"):
        spire.validate_server_id_value("A" * 257)


# --- A.3 tags -----------------------------------------------------------------------------------


def test_tag_names_exact() -> None:
    assert spire.TAG_TRUST_DOMAIN == "spire-server-td"
    assert spire.TAG_SERVER_ID == "spire-server-id"
    assert spire.TAG_ACTIVE == "spire-active"
    assert spire.TAG_KEY_ID == "spire-key-id"
    assert spire.TAG_LAST_UPDATE == "spire-last-update"
    assert set(spire.SPIRE_TAGS) == {
        "spire-server-td",
        "spire-server-id",
        "spire-active",
        "spire-key-id",
        "spire-last-update",
    }
    assert (spire.ACTIVE_TRUE, spire.ACTIVE_FALSE) == ("true", "false")


def test_spire_tags_exactly_five() -> None:
    tags = spire.spire_tags("test.example.org", SERVER, "bundle-acme-foo.bar+rsa", 1767225600)
    assert tags == {
        "spire-server-td": "test.example.org",  # raw, not sanitized
        "spire-server-id": SERVER,
        "spire-active": "true",
        "spire-key-id": "bundle-acme-foo.bar+rsa",  # raw, not encoded
        "spire-last-update": "1767225600",
    }
    for key, value in tags.items():
        assert len(key) <= 128
        assert len(value) <= 256
        assert not key.startswith("aws:")


def test_spire_tags_reject_negative_time() -> None:
    with pytest.raises(ContractError):
        spire.spire_tags(TD, SERVER, "x509-CA-A", -1)


def test_well_known_key_ids() -> None:
    # SPIRE's two slots (A, B) of each of its three kinds of key.
    kinds = ("x509-CA", "JWT-Signer", "WIT-Signer")
    assert tuple(f"{kind}-{slot}" for kind in kinds for slot in "AB") == spire.WELL_KNOWN_KEY_IDS
    for key_id in spire.WELL_KNOWN_KEY_IDS:
        assert spire.encode_key_id(key_id) == key_id
