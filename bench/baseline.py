"""SPIRE's legacy alias-based discovery and sweeps, as reference code for the benchmark.

Written from the documented behaviour of SPIRE's ``aws_kms`` KeyManager in alias mode (see
``/work/shared/reference/spire-aws-kms-plugin.md`` sections 4 and 6), not ported from its source.
It makes the same KMS calls, in the same amounts, that a SPIRE server in alias mode makes:

* :meth:`LegacySpire.discover` (at start): ListAliases over the whole account, every page (Limit
  100); DescribeKey on the alias ARN of each of this server's aliases
  (``alias/SPIRE_SERVER/<td>/<server id>/``). SPIRE also calls GetPublicKey per alias; that call is
  left out, since the daemon never needs a public key.
* :meth:`LegacySpire.refresh_aliases` (every 6 h): per discovered alias, DescribeKey on the alias
  name, then UpdateAlias to the same target unless a replica moved it.
* :meth:`LegacySpire.dispose_aliases` (every 24 h): ListAliases over the account; an alias of
  another server of the trust domain (SPIRE's raw prefix, without the trailing slash) whose
  LastUpdatedDate is at least 14 days old gets DescribeKey on its ARN and, if its key is Enabled,
  DeleteAlias, and the key is queued for deletion. Aliases without a date are skipped, as SPIRE
  does (moto's aliases have none).
* :meth:`LegacySpire.dispose_keys` (every 48 h, the orphan sweep): ListKeys over the account (Limit
  1000), DescribeKey per key; an Enabled key whose description starts with
  ``SPIRE_SERVER_KEY/<td>`` and that is at least 48 h old gets ListAliases(KeyId, Limit 1), and
  is queued for deletion when it has no alias.
* :meth:`LegacySpire.drain_queue`: ScheduleKeyDeletion (7 days) per queued key; a key already
  pending or gone is dropped. SPIRE drains its queue concurrently (capacity 120, overflow
  dropped); here it is drained after the sweep, without a cap, so that every orphan is counted.
  SPIRE queues key ARNs; this queues key IDs, which AWS accepts alike, because moto 5.2.5's
  ScheduleKeyDeletion fails with HTTP 500 on an ARN.

Calls run concurrently within a bound (the daemon's default of 8 calls in flight), so that wall
times compare like with like. Nothing here counts calls: the benchmark counts the HTTP requests
on the client it hands in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from daemon import spire

T = TypeVar("T")
R = TypeVar("R")

ALIAS_PAGE = 100  # ListAliases Limit SPIRE uses
KEYS_PAGE = 1000  # ListKeys Limit SPIRE uses
ALIAS_STALE_AFTER = timedelta(days=14)
ORPHAN_MIN_AGE = timedelta(hours=48)
PENDING_WINDOW_DAYS = 7
_GONE_CODES = frozenset({"NotFoundException", "KMSInvalidStateException", "InvalidArnException"})


@dataclass(frozen=True, slots=True)
class LegacyEntry:
    """One key of this server as alias discovery caches it."""

    spire_key_id: str
    alias_name: str
    alias_arn: str
    key_arn: str


@dataclass(slots=True)
class SweepReport:
    """What one pass of the legacy sweeps found and did."""

    aliases_deleted: int = 0
    keys_described: int = 0
    orphans_queued: int = 0
    deletions_scheduled: int = 0
    errors: list[str] = field(default_factory=list)


class LegacySpire:
    """A SPIRE server in alias mode, as far as its KMS calls go."""

    def __init__(
        self,
        kms: Any,
        trust_domain: str,
        server_id: str,
        *,
        concurrency: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._kms = kms
        self._trust_domain = trust_domain
        self._server_id = server_id
        self._slots = asyncio.Semaphore(concurrency)
        self._clock = clock
        self.cache: list[LegacyEntry] = []
        self.queue: list[str] = []

    # --- helpers -------------------------------------------------------------------------------

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        async with self._slots:
            response: dict[str, Any] = await getattr(self._kms, method)(**params)
            return response

    @staticmethod
    async def _each(items: Iterable[T], call: Callable[[T], Awaitable[R]]) -> list[R]:
        return list(await asyncio.gather(*(call(item) for item in items)))

    async def _aliases(self, key_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        marker: str | None = None
        while True:
            params: dict[str, Any] = {"Limit": ALIAS_PAGE}
            if key_id is not None:
                params["KeyId"] = key_id
            if marker:
                params["Marker"] = marker
            page = await self._call("list_aliases", **params)
            for alias in page.get("Aliases", []):
                yield alias
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                return

    # --- discovery and refresh -----------------------------------------------------------------

    async def discover(self) -> list[LegacyEntry]:
        """List the account's aliases; describe each of this server's, and cache them."""
        prefix = spire.alias_prefix(self._trust_domain, self._server_id)
        own = [
            alias
            async for alias in self._aliases()
            if alias.get("AliasName", "").startswith(prefix) and alias.get("AliasArn")
        ]

        async def describe(alias: dict[str, Any]) -> LegacyEntry:
            meta = (await self._call("describe_key", KeyId=alias["AliasArn"]))["KeyMetadata"]
            if not meta.get("Enabled"):
                raise RuntimeError(f"found disabled SPIRE key {meta['Arn']}")  # SPIRE fails start
            name = alias["AliasName"]
            return LegacyEntry(
                spire.decode_key_id(name[len(prefix) :]), name, alias["AliasArn"], meta["Arn"]
            )

        self.cache = await self._each(own, describe)
        return self.cache

    async def refresh_aliases(self) -> int:
        """Bump each cached alias (UpdateAlias to the same target); return how many."""

        async def refresh(entry: LegacyEntry) -> int:
            meta = (await self._call("describe_key", KeyId=entry.alias_name))["KeyMetadata"]
            if meta["Arn"] != entry.key_arn:
                return 0  # a replica rotated it: never revert
            await self._call("update_alias", AliasName=entry.alias_name, TargetKeyId=entry.key_arn)
            return 1

        return sum(await self._each(self.cache, refresh))

    # --- sweeps --------------------------------------------------------------------------------

    async def dispose_aliases(self, report: SweepReport) -> None:
        """Delete other servers' aliases of the trust domain that are 14 days stale."""
        td_prefix = f"{spire.ALIAS_ROOT}{spire.sanitize_trust_domain(self._trust_domain)}"
        own_prefix = f"{td_prefix}/{self._server_id}"
        cutoff = self._clock() - ALIAS_STALE_AFTER
        stale = [
            alias
            async for alias in self._aliases()
            if alias.get("AliasName", "").startswith(td_prefix)
            and not alias["AliasName"].startswith(own_prefix)
            and alias.get("AliasArn")
            and alias.get("LastUpdatedDate") is not None
            and alias["LastUpdatedDate"] <= cutoff
        ]

        async def dispose(alias: dict[str, Any]) -> None:
            try:
                meta = (await self._call("describe_key", KeyId=alias["AliasArn"]))["KeyMetadata"]
                if not meta.get("Enabled"):
                    return
                await self._call("delete_alias", AliasName=alias["AliasName"])
            except ClientError as exc:
                report.errors.append(str(exc))
                return
            report.aliases_deleted += 1
            self.queue.append(meta["KeyId"])

        await self._each(stale, dispose)

    async def dispose_keys(self, report: SweepReport) -> None:
        """The orphan sweep: describe every key of the account, queue unaliased SPIRE keys."""
        description = f"{spire.DESCRIPTION_ROOT}{spire.sanitize_trust_domain(self._trust_domain)}"
        cutoff = self._clock() - ORPHAN_MIN_AGE
        key_ids: list[str] = []
        marker: str | None = None
        while True:
            params: dict[str, Any] = {"Limit": KEYS_PAGE}
            if marker:
                params["Marker"] = marker
            page = await self._call("list_keys", **params)
            key_ids += [k["KeyId"] for k in page.get("Keys", []) if k.get("KeyId")]
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                break

        async def check(key_id: str) -> None:
            try:
                meta = (await self._call("describe_key", KeyId=key_id))["KeyMetadata"]
                report.keys_described += 1
                created = meta.get("CreationDate")
                if (
                    not meta.get("Enabled")
                    or not str(meta.get("Description") or "").startswith(description)
                    or created is None
                    or created > cutoff
                ):
                    return
                aliases = await self._call("list_aliases", KeyId=key_id, Limit=1)
            except ClientError as exc:
                report.errors.append(str(exc))
                return
            if not aliases.get("Aliases"):
                report.orphans_queued += 1
                self.queue.append(meta["KeyId"])

        await self._each(key_ids, check)

    async def drain_queue(self, report: SweepReport) -> None:
        """Schedule the deletion of every queued key (7 days); drop those pending or gone."""
        queued, self.queue = self.queue, []

        async def schedule(arn: str) -> None:
            try:
                await self._call(
                    "schedule_key_deletion", KeyId=arn, PendingWindowInDays=PENDING_WINDOW_DAYS
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _GONE_CODES:
                    report.errors.append(str(exc))
                return
            report.deletions_scheduled += 1

        await self._each(queued, schedule)

    async def sweep(self) -> SweepReport:
        """One pass of both sweeps and the deletion queue (what runs every 24-48 h)."""
        report = SweepReport()
        await self.dispose_aliases(report)
        await self.dispose_keys(report)
        await self.drain_queue(report)
        return report
