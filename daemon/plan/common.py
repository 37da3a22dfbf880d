"""What both planners share: ARNs, times, which key serves, and what a SPIRE key looks like."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from daemon import spire
from daemon.model import AliasTarget, KeyMeta, ObservedKey

#: KMS's key manager of keys a customer (SPIRE) created.
CUSTOMER_MANAGED = "CUSTOMER"


def key_id_from_arn(arn: str) -> str:
    """Return the KMS key ID of a key ARN (``arn:aws:kms:<region>:<acct>:key/<id>``)."""
    _, _, resource = arn.rpartition(":")
    return resource.removeprefix("key/")


def iso(unix_seconds: int) -> str:
    """Unix seconds as an ISO 8601 UTC time (``?`` when out of range)."""
    try:
        return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return "?"


def unix(moment: datetime) -> int:
    """A moment as whole Unix seconds (truncated, as SPIRE writes them)."""
    return int(moment.timestamp())


def created(meta: KeyMeta | None) -> datetime | None:
    """The key's CreationDate, when it was described."""
    return meta.creation_date if meta is not None else None


def newest_first(keys: Iterable[ObservedKey]) -> list[ObservedKey]:
    """Order keys newest CreationDate first; unknown dates last; ARN breaks ties."""

    def sort_key(key: ObservedKey) -> tuple[int, float, str]:
        moment = created(key.meta)
        if moment is None:
            return (1, 0.0, key.arn)
        return (0, -moment.timestamp(), key.arn)

    return sorted(keys, key=sort_key)


def choose_serving(
    candidates: Sequence[ObservedKey], alias: AliasTarget | None
) -> tuple[ObservedKey | None, KeyMeta | None]:
    """Pick the key that serves one SPIRE key ID of this server.

    The alias target wins when the alias exists and its key is Enabled (it may be an untagged legacy
    key, returned as the second element); otherwise the newest Enabled tagged key.
    Returns ``(tagged serving key or None, legacy alias target or None)``.
    """
    target = alias.target if alias is not None else None
    if target is not None and target.enabled:
        for key in candidates:
            if key.arn == target.arn:
                return key, None
        return None, target
    enabled = [k for k in candidates if k.meta is not None and k.meta.enabled]
    ordered = newest_first(enabled)
    return (ordered[0] if ordered else None), None


def group_by_key_id(
    keys: Iterable[ObservedKey],
) -> tuple[dict[str, list[ObservedKey]], list[ObservedKey]]:
    """This server's keys by SPIRE key ID, and those without a ``spire-key-id`` tag."""
    groups: dict[str, list[ObservedKey]] = {}
    missing: list[ObservedKey] = []
    for key in keys:
        kid = key.tags.get(spire.TAG_KEY_ID)
        if not kid:
            missing.append(key)
        else:
            groups.setdefault(kid, []).append(key)
    return groups, missing


def not_spire_shaped(meta: KeyMeta) -> str | None:
    """Why a key cannot be one SPIRE made, or None when it can.

    SPIRE's ``aws_kms`` plugin creates customer-managed, single-Region ``SIGN_VERIFY`` keys of
    four specs. Anything else carrying SPIRE's tags is someone else's key: never touched. A field
    DescribeKey did not give counts as not SPIRE's.
    """
    if meta.key_manager != CUSTOMER_MANAGED:
        return f"KeyManager is {meta.key_manager or 'unknown'}, not {CUSTOMER_MANAGED}"
    if meta.key_usage != spire.KEY_USAGE:
        return f"KeyUsage is {meta.key_usage or 'unknown'}, not {spire.KEY_USAGE}"
    if meta.key_spec not in spire.KEY_SPECS:
        return f"KeySpec is {meta.key_spec or 'unknown'}, not one of SPIRE's"
    if meta.multi_region is not False:
        return "a multi-Region key" if meta.multi_region else "MultiRegion is unknown"
    return None


def relevant_tags(tags: Mapping[str, str], protect_tag: str) -> dict[str, str]:
    """The tags a reclaim decision reads: SPIRE's, the daemon's mark and the protect tag."""
    return {
        k: v
        for k, v in tags.items()
        if k.startswith("spire-") or k in (protect_tag, spire.TAG_MARKED_AT)
    }
