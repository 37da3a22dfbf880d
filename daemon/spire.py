"""SPIRE's contract on AWS KMS: tag names, alias names, key-ID encoding and server IDs.

Everything here is pure and mirrors what SPIRE's ``aws_kms`` KeyManager plugin writes and reads,
so that a SPIRE server and this daemon never surprise each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from daemon.files import FileProblem, read_text

TAG_TRUST_DOMAIN = "spire-server-td"
TAG_SERVER_ID = "spire-server-id"
TAG_ACTIVE = "spire-active"
TAG_KEY_ID = "spire-key-id"
TAG_LAST_UPDATE = "spire-last-update"

#: The five tags SPIRE's tag-based discovery relies on.
SPIRE_TAGS = (TAG_TRUST_DOMAIN, TAG_SERVER_ID, TAG_ACTIVE, TAG_KEY_ID, TAG_LAST_UPDATE)

ACTIVE_TRUE = "true"
ACTIVE_FALSE = "false"

#: What SPIRE's CreateKey asks for: KeyUsage, and the key specs of its four key types.
KEY_USAGE = "SIGN_VERIFY"
KEY_SPECS = ("RSA_2048", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384")

#: The daemon's own tag, written with ``spire-active=false`` in the same call: when it marked the
#: key (Unix seconds, AWS's clock). It lies outside SPIRE's reserved ``spire-`` prefix. A key
#: marked false without it, or with an old one, was not left mid-reclaim by the daemon.
TAG_MARKED_AT = "SpireKmsReconciler:MarkedAt"

ALIAS_ROOT = "alias/SPIRE_SERVER/"
DESCRIPTION_ROOT = "SPIRE_SERVER_KEY/"

#: Key IDs a SPIRE server creates; ACME keys add ``bundle-acme-<name>``.
WELL_KNOWN_KEY_IDS = (
    "x509-CA-A",
    "x509-CA-B",
    "JWT-Signer-A",
    "JWT-Signer-B",
    "WIT-Signer-A",
    "WIT-Signer-B",
)

_INT64_MAX = 2**63 - 1
_LAST_UPDATE_RE = re.compile(r"(?:0|[1-9][0-9]*)")
_SERVER_ID_VALUE_RE = re.compile(r"[A-Za-z0-9/_-]+")
_HEX = "[0-9a-fA-F]"
_UUID_CANONICAL = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
# SPIRE parses with gofrs/uuid: canonical or 32-hex, each bare, braced or urn:uuid:-prefixed.
_UUID_PLAIN = f"(?:{_UUID_CANONICAL}|{_HEX}{{32}})"
_UUID_FORMS = re.compile(rf"(?:{_UUID_PLAIN}|\{{{_UUID_PLAIN}\}}|urn:uuid:{_UUID_PLAIN})")
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")


class ContractError(ValueError):
    """A value that SPIRE's contract does not admit."""


def sanitize_trust_domain(trust_domain: str) -> str:
    """Return the trust domain as SPIRE writes it in alias names: every ``.`` becomes ``_``."""
    return trust_domain.replace(".", "_")


_SPIFFE_SCHEME = "spiffe://"
_PATH_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")


def parse_trust_domain(value: str) -> str:
    """Return the trust domain name ``value`` stands for, as SPIRE reads ``trust_domain``.

    SPIRE parses it with go-spiffe's ``TrustDomainFromString``: a bare name (``example.org``),
    or, when the value holds ``:/``, a SPIFFE ID (``spiffe://example.org``, a path allowed),
    whose trust domain is taken. Tags and aliases always carry the bare name.
    """
    if ":/" not in value:
        return validate_trust_domain(value)
    if not value.startswith(_SPIFFE_SCHEME):
        raise ContractError(
            f"{value[:60]!r} is neither a trust domain name nor a spiffe:// ID "
            "(write example.org or spiffe://example.org)"
        )
    name, slash, path = value[len(_SPIFFE_SCHEME) :].partition("/")
    if slash:
        segments = path.split("/")
        if any(not _PATH_SEGMENT_RE.fullmatch(seg) or seg in (".", "..") for seg in segments):
            raise ContractError(
                f"{value[:60]!r} is not a valid SPIFFE ID: its path must be non-empty segments "
                "of letters, digits, '.', '-' and '_', not '.' or '..', with no trailing slash"
            )
    return validate_trust_domain(name)


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain name, else raise."""
    if not trust_domain:
        raise ContractError("must not be empty")
    if len(trust_domain) > 255:
        raise ContractError("must be at most 255 characters")
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise ContractError(
            "may contain only lowercase letters, digits, '.', '-' and '_' "
            "(a SPIFFE trust domain name, e.g. example.org)"
        )
    return trust_domain


def encode_key_id(key_id: str) -> str:
    """Encode a SPIRE key ID for an alias name: ``.`` -> ``_2e``, then ``+`` -> ``_2b``."""
    return key_id.replace(".", "_2e").replace("+", "_2b")


def decode_key_id(encoded: str) -> str:
    """Reverse :func:`encode_key_id` in the same order SPIRE does."""
    return encoded.replace("_2e", ".").replace("_2b", "+")


def join_path(*parts: str) -> str:
    """Join alias name parts as Go's path.Join does, which SPIRE uses: empty parts dropped, the
    result cleaned (repeated slashes as one, no trailing slash, ``.`` and ``..`` resolved)."""
    return _clean_path("/".join(p for p in parts if p))


def _clean_path(path: str) -> str:
    if not path:
        return ""
    rooted = path.startswith("/")
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(segment)
    cleaned = "/".join(out)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def alias_prefix(trust_domain: str, server_id: str) -> str:
    """Return the alias prefix owned by one server, including its trailing slash.

    SPIRE builds it with path.Join, so a ``key_identifier_value`` with repeated, leading or
    trailing slashes (``a//b/``) owns the cleaned prefix (``.../a/b/``).
    """
    return join_path(ALIAS_ROOT, sanitize_trust_domain(trust_domain), server_id) + "/"


def trust_domain_alias_prefix(trust_domain: str) -> str:
    """Return the alias prefix shared by all servers of a trust domain (with trailing slash)."""
    return join_path(ALIAS_ROOT, sanitize_trust_domain(trust_domain)) + "/"


def alias_name(trust_domain: str, server_id: str, key_id: str) -> str:
    """Return the alias SPIRE gives key ``key_id`` of server ``server_id`` in ``trust_domain``."""
    sanitized = sanitize_trust_domain(trust_domain)
    return join_path(ALIAS_ROOT, sanitized, server_id, encode_key_id(key_id))


def parse_alias(name: str, trust_domain: str, server_id: str) -> str | None:
    """Return the SPIRE key ID if alias ``name`` belongs to this server, else ``None``.

    Ownership needs the full prefix with its trailing slash, so ``example_org`` never matches
    ``example_org2`` and server ``abc`` never owns ``abcd``'s aliases; and what follows it must
    be one path segment (SPIRE's key IDs hold no ``/``), so server ``a`` never owns server
    ``a/b``'s aliases.
    """
    prefix = alias_prefix(trust_domain, server_id)
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if not rest or "/" in rest:
        return None
    return decode_key_id(rest)


def is_spire_alias(name: str) -> bool:
    """Return whether ``name`` lies in SPIRE's alias namespace (any trust domain, any server)."""
    return name.startswith(ALIAS_ROOT)


def key_description(trust_domain: str, key_id: str) -> str:
    """Return the description SPIRE gives a key: ``SPIRE_SERVER_KEY/<sanitizedTD>/<rawKeyID>``."""
    return f"{DESCRIPTION_ROOT}{sanitize_trust_domain(trust_domain)}/{key_id}"


def parse_last_update(value: str | None) -> int | None:
    """Parse a ``spire-last-update`` value: plain decimal Unix seconds within int64.

    Returns ``None`` for a malformed value (sign, padding, fraction, hex, empty, out of range).
    Callers treat a *missing* tag separately from a malformed one.
    """
    if value is None or not _LAST_UPDATE_RE.fullmatch(value):
        return None
    if not value.isascii():
        return None
    number = int(value)
    if number > _INT64_MAX:
        return None
    return number


def format_last_update(unix_seconds: int) -> str:
    """Render Unix seconds the way SPIRE writes ``spire-last-update``."""
    if unix_seconds < 0:
        raise ContractError("spire-last-update cannot be negative")
    return str(unix_seconds)


#: What SPIRE's check of ``key_identifier_value`` lets through although a KMS alias name cannot
#: hold it: its character range ``A-z`` spans ``[ \\ ] ^ _`` and the backtick.
_SPIRE_RANGE_EXTRAS = frozenset("[\\]^`")


def validate_server_id_value(value: str) -> str:
    """Check a ``key_identifier_value`` against SPIRE's rules and what KMS alias names can hold;
    return it unchanged."""
    if not value:
        raise ContractError("must not be empty")
    if len(value.encode()) > 256:
        raise ContractError("must be at most 256 bytes (SPIRE refuses a longer one)")
    if not _SERVER_ID_VALUE_RE.fullmatch(value):
        odd = sorted({ch for ch in value if ch in _SPIRE_RANGE_EXTRAS})
        if odd and all(
            ch in _SPIRE_RANGE_EXTRAS or _SERVER_ID_VALUE_RE.fullmatch(ch) for ch in value
        ):
            raise ContractError(
                f"holds {' '.join(odd)}: SPIRE's own check lets that through (its A-z range "
                "spans [ \\ ] ^ and the backtick), but a KMS alias name cannot hold it, so "
                "SPIRE fails to create its keys' aliases; use only letters A-Z a-z, digits 0-9, "
                "'/', '_' and '-'"
            )
        raise ContractError(
            "may contain only letters A-Z a-z, digits 0-9, '/', '_' and '-' (SPIRE refuses "
            "anything else)"
        )
    if value.startswith("alias/aws/"):
        raise ContractError("must not start with 'alias/aws/' (SPIRE refuses it)")
    return value


@dataclass(frozen=True, slots=True)
class ParsedServerId:
    """A server ID read from SPIRE's key identifier file."""

    server_id: str


def parse_server_id_file_content(content: str) -> ParsedServerId:
    """Parse a key identifier file's whole content as SPIRE does (gofrs/uuid ``FromString``:
    nothing trimmed).

    SPIRE accepts the canonical and 32-hex forms, each bare, braced or ``urn:uuid:``-prefixed, and
    uses the UUID in lowercase 8-4-4-4-12 form. Anything else, a trailing newline included,
    stops SPIRE from starting.
    """
    if not _UUID_FORMS.fullmatch(content):
        stripped = content.strip()
        if stripped != content and _UUID_FORMS.fullmatch(stripped):
            raise ContractError(
                f"holds {content[:64]!r}: a UUID with white space around it; SPIRE parses the "
                "whole content as a UUID and does not start with this file either: write the "
                "UUID alone, with no newline (printf '%s' ID > FILE)"
            )
        raise ContractError(
            f"content is not a UUID: {content[:64]!r}; SPIRE does not start with this file either"
        )
    hex_digits = re.sub(r"[^0-9a-fA-F]", "", content.removeprefix("urn:uuid:")).lower()
    canonical = (
        f"{hex_digits[0:8]}-{hex_digits[8:12]}-{hex_digits[12:16]}-"
        f"{hex_digits[16:20]}-{hex_digits[20:32]}"
    )
    return ParsedServerId(canonical)


def read_server_id_file(path: Path) -> ParsedServerId:
    """Read SPIRE's key identifier file. The daemon never creates it: that file is SPIRE's."""
    try:
        content = read_text(path)
    except FileProblem as exc:
        if exc.missing:
            raise ContractError(
                f"key identifier file {path} does not exist; SPIRE creates it on first start, "
                "so start the SPIRE server first or set key_identifier_value"
            ) from None
        raise ContractError(f"key identifier file {path}: {exc}") from None
    try:
        return parse_server_id_file_content(content)
    except ContractError as exc:
        raise ContractError(f"key identifier file {path}: {exc}") from None


def spire_tags(trust_domain: str, server_id: str, key_id: str, last_update: int) -> dict[str, str]:
    """Return the five tags SPIRE's tag-based discovery expects on an active key."""
    return {
        TAG_TRUST_DOMAIN: trust_domain,
        TAG_SERVER_ID: server_id,
        TAG_ACTIVE: ACTIVE_TRUE,
        TAG_KEY_ID: key_id,
        TAG_LAST_UPDATE: format_last_update(last_update),
    }
