"""An in-memory AWS account (KMS and the tagging API) on a simulated clock, for the fleet
simulation (:mod:`devtools.fleet`).

It answers the calls the daemon makes the way AWS documents them, in botocore's shapes, so that
the daemon's own :class:`~daemon.aws.client.AwsApi` (pagination, typed errors, the per-run AWS
clock from the ``Date`` header) runs on top of it unchanged:

* key states: tagging or scheduling a key pending deletion fails with KMSInvalidStateException,
  tag:TagResources reports such keys per ARN in ``FailedResourcesMap``; deleted keys are gone, and
  KMS deletes a deleted key's aliases with it;
* the tagging index is eventually consistent: GetResources sees each change of a key's tags only
  after a random lag (up to ``index_lag``), and lists a deleted key for that long; ListResourceTags
  and DescribeKey see the truth;
* SigV4's signing window: a caller whose clock is more than 5 minutes off AWS's is refused;
* paging: GetResources by ResourcesPerPage, ListAliases by Limit and Marker;
* every call takes simulated time (``SimAccount.wait``), so runs of several daemons interleave;
* faults: throttling, DescribeKey failures, a response without a ``Date``, and a process killed
  right after a mutating call took effect (every later call of that process dies too).

It is a model, not moto and not AWS: only what the daemon calls is there.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

from botocore.exceptions import ClientError

from daemon import spire

ACCOUNT = "111122223333"
REGION = "us-east-1"
SIGNING_WINDOW = timedelta(minutes=5)


class Killed(BaseException):
    """The daemon's process was killed (SIGKILL, or its host went down)."""


@dataclass(eq=False)
class SimKey:
    """A KMS key and the history of its tags (what the index shows lags behind it)."""

    key_id: str
    created: datetime
    owner: str | None = None  # the SPIRE server that created it (simulation bookkeeping)
    usage: str = "SIGN_VERIFY"
    spec: str = "ECC_NIST_P256"
    multi_region: bool = False
    state: str = "Enabled"
    deletion_date: datetime | None = None
    deleted_at: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)
    #: (visible to the index from, tags as of then), oldest first
    history: list[tuple[datetime, dict[str, str]]] = field(default_factory=list)
    aliases: set[str] = field(default_factory=set)
    #: restored by an operator and not tagged spire-active=true since: never to be reclaimed
    restored: bool = False
    #: when each daemon last read its tags from KMS (ListResourceTags)
    reread: dict[str, datetime] = field(default_factory=dict)

    @property
    def arn(self) -> str:
        """The key's ARN."""
        return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{self.key_id}"


@dataclass(eq=False)
class SimAlias:
    """An alias: its target and dates."""

    name: str
    target: str
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class Write:
    """A mutating call that is about to take effect, for the simulation's invariants."""

    operation: str  # TagResource, TagResources, UpdateAlias, ScheduleKeyDeletion
    key: SimKey
    who: str  # the daemon's server ID
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass
class RunLog:
    """What one daemon run was shown by the tagging index (for its call bound)."""

    listed: list[dict[str, str]] = field(default_factory=list)
    by_arn: int = 0
    #: keys a write failed for (the daemon may then ask whether each is pending already)
    write_failures: int = 0
    #: DescribeKey calls that failed or found the key not Enabled (another may be asked for)
    describe_misses: int = 0


#: The run the current task belongs to, if the simulation tracks one.
CURRENT_RUN: ContextVar[RunLog | None] = ContextVar("sim_run", default=None)


async def _no_wait() -> None:
    return None


class SimAccount:
    """The account's keys and aliases, on a clock the simulation moves."""

    def __init__(self, now: datetime, rng: random.Random, *, index_lag: timedelta) -> None:
        self.now = now
        self.rng = rng
        self.index_lag = index_lag
        self.keys: dict[str, SimKey] = {}
        self.aliases: dict[str, SimAlias] = {}
        self._by_td: dict[str, set[str]] = {}
        self._seq = 0
        #: Awaited by every call before it takes effect: the call's share of simulated time.
        self.wait: Callable[[], Awaitable[None]] = _no_wait
        #: Called right before a daemon's write takes effect (the simulation checks invariants).
        self.on_write: Callable[[Write], None] = lambda write: None

    # --- the model ----------------------------------------------------------------------------

    def create_key(
        self, owner: str | None, tags: Mapping[str, str] | None = None, **shape: Any
    ) -> SimKey:
        """CreateKey (with its tags, as SPIRE's tag mode sends them)."""
        self._seq += 1
        key_id = f"{self._seq:08x}-0000-4000-8000-{self._seq:012x}"
        key = SimKey(key_id, self.now, owner, **shape)
        self.keys[key_id] = key
        if tags:
            self.tag(key, tags)
        return key

    def tag(self, key: SimKey, tags: Mapping[str, str]) -> None:
        """TagResource on a key whose state allows it (the callers check)."""
        key.tags.update(tags)
        if tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_TRUE:
            key.restored = False  # back in SPIRE's lifecycle: judged as any other key
        lag = timedelta(seconds=self.rng.uniform(0, self.index_lag.total_seconds()))
        key.history.append((self.now + lag, dict(key.tags)))
        del key.history[:-8]
        td = key.tags.get(spire.TAG_TRUST_DOMAIN)
        if td:
            self._by_td.setdefault(td, set()).add(key.key_id)

    def schedule(self, key: SimKey, days: int) -> None:
        """ScheduleKeyDeletion on an Enabled or Disabled key."""
        key.state = "PendingDeletion"
        key.deletion_date = self.now + timedelta(days=days)

    def cancel_and_enable(self, key: SimKey) -> None:
        """An operator's restore: CancelKeyDeletion (the key is then Disabled), then EnableKey."""
        assert key.state == "PendingDeletion"
        key.state = "Enabled"
        key.deletion_date = None
        key.restored = key.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_FALSE

    def set_alias(self, name: str, key: SimKey) -> None:
        """CreateAlias or UpdateAlias."""
        alias = self.aliases.get(name)
        if alias is None:
            alias = self.aliases[name] = SimAlias(name, key.key_id, self.now, self.now)
        else:
            self.keys[alias.target].aliases.discard(name)
            alias.target, alias.updated = key.key_id, self.now
        key.aliases.add(name)

    def delete_alias(self, name: str) -> None:
        """DeleteAlias."""
        alias = self.aliases.pop(name, None)
        if alias is not None:
            self.keys[alias.target].aliases.discard(name)

    def tick(self) -> None:
        """Delete the keys whose pending window has passed; forget the deleted keys the index no
        longer lists."""
        for key in list(self.keys.values()):
            if (
                key.state == "PendingDeletion"
                and key.deletion_date
                and key.deletion_date <= self.now
            ):
                key.state = "Deleted"
                key.deleted_at = self.now
                for name in list(key.aliases):
                    self.delete_alias(name)  # KMS deletes a deleted key's aliases with it
            if key.deleted_at is not None and self.now - key.deleted_at > self.index_lag:
                for members in self._by_td.values():
                    members.discard(key.key_id)
                del self.keys[key.key_id]

    def find(self, ref: str) -> SimKey | None:
        """A key by ID, ARN, alias name or alias ARN (deleted keys are not found)."""
        if ref.startswith("alias/") or ":alias/" in ref:
            name = ref if ref.startswith("alias/") else "alias/" + ref.split(":alias/", 1)[1]
            alias = self.aliases.get(name)
            ref = alias.target if alias else ""
        key = self.keys.get(ref.rpartition(":key/")[2] if ":key/" in ref else ref)
        return key if key is not None and key.state != "Deleted" else None

    def indexed_tags(self, key: SimKey) -> dict[str, str] | None:
        """The key's tags as the tagging index shows them now (None: not listed)."""
        if key.deleted_at is not None and self.now - key.deleted_at > self.index_lag:
            return None
        seen: dict[str, str] | None = None
        for visible, tags in key.history:
            if visible <= self.now:
                seen = tags
        return seen

    def keys_of(self, trust_domain: str) -> Iterable[SimKey]:
        """Every key tagged with a trust domain that the index may still list."""
        return (self.keys[k] for k in sorted(self._by_td.get(trust_domain, ())) if k in self.keys)

    def freshness(self, key: SimKey) -> datetime:
        """The latest sign of life AWS holds for a key: its stamp, an alias update, its creation."""
        moments = [key.created]
        stamp = spire.parse_last_update(key.tags.get(spire.TAG_LAST_UPDATE))
        if stamp is not None:
            moments.append(datetime.fromtimestamp(stamp, self.now.tzinfo))
        moments += [self.aliases[n].updated for n in key.aliases if n in self.aliases]
        return max(moments)

    def date(self) -> str:
        """AWS's clock, as a Date header."""
        return format_datetime(self.now, usegmt=True)


@dataclass
class Faults:
    """What goes wrong for one daemon process's calls."""

    throttle_rate: float = 0.0
    describe_failure_rate: float = 0.0
    drop_date_rate: float = 0.0
    #: the process dies right after this many more writes took effect (None: it does not)
    kill_after_writes: int | None = None
    killed: bool = False
    writes: int = 0
    throttled: int = 0
    kills: int = 0


class _Meta:
    region_name = REGION
    endpoint_url = "sim://aws"


class _Client:
    """What both clients share: the account, the caller's clock, faults and errors."""

    meta = _Meta()

    def __init__(
        self, account: SimAccount, host_clock: Callable[[], datetime], faults: Faults, who: str
    ) -> None:
        self.account = account
        self.host_clock = host_clock
        self.faults = faults
        self.who = who

    def _meta(self) -> dict[str, Any]:
        headers = {} if self._roll(self.faults.drop_date_rate) else {"date": self.account.date()}
        return {"HTTPStatusCode": 200, "HTTPHeaders": headers}

    def _roll(self, rate: float) -> bool:
        return bool(rate) and self.account.rng.random() < rate

    def _error(self, operation: str, code: str, message: str, status: int = 400) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": code, "Message": message},
                "ResponseMetadata": {
                    "HTTPStatusCode": status,
                    "HTTPHeaders": {"date": self.account.date()},
                },
            },
            operation,
        )

    async def _enter(self, operation: str) -> None:
        if self.faults.killed:
            raise Killed
        await self.account.wait()
        if self.faults.killed:  # the process died while the request was on its way
            raise Killed
        skew = self.host_clock() - self.account.now
        if abs(skew) > SIGNING_WINDOW:
            raise self._error(
                operation, "InvalidSignatureException", "Signature expired: request time too skewed"
            )
        if self._roll(self.faults.throttle_rate):
            self.faults.throttled += 1
            code = (
                "ThrottledException"
                if operation in ("GetResources", "TagResources")
                else ("ThrottlingException")
            )
            raise self._error(operation, code, "Rate exceeded")

    def _write_failed(self, keys: int = 1) -> None:
        run = CURRENT_RUN.get()
        if run is not None:
            run.write_failures += keys

    def _wrote(self) -> None:
        self.faults.writes += 1
        left = self.faults.kill_after_writes
        if left is not None:
            if left <= 1:
                self.faults.kill_after_writes = None
                self.faults.kills += 1
                self.faults.killed = True
                raise Killed
            self.faults.kill_after_writes = left - 1


class SimKms(_Client):
    """The KMS operations the daemon calls."""

    def _key(self, operation: str, ref: str) -> SimKey:
        key = self.account.find(str(ref))
        if key is None:
            raise self._error(operation, "NotFoundException", f"Key '{ref}' does not exist")
        return key

    async def describe_key(self, KeyId: str) -> dict[str, Any]:
        run = CURRENT_RUN.get()
        try:
            await self._enter("DescribeKey")
            if self._roll(self.faults.describe_failure_rate):
                raise self._error("DescribeKey", "KMSInternalException", "internal failure", 500)
            key = self._key("DescribeKey", KeyId)
        except ClientError:
            if run is not None:
                run.describe_misses += 1
            raise
        if run is not None and key.state != "Enabled":
            run.describe_misses += 1
        meta: dict[str, Any] = {
            "KeyId": key.key_id,
            "Arn": key.arn,
            "KeyState": key.state,
            "Enabled": key.state == "Enabled",
            "CreationDate": key.created,
            "Description": "",
            "KeyManager": "CUSTOMER",
            "KeyUsage": key.usage,
            "KeySpec": key.spec,
            "MultiRegion": key.multi_region,
        }
        if key.deletion_date is not None and key.state == "PendingDeletion":
            meta["DeletionDate"] = key.deletion_date
        return {"KeyMetadata": meta, "ResponseMetadata": self._meta()}

    async def list_aliases(
        self,
        Limit: int = 50,
        Marker: str | None = None,
        KeyId: str | None = None,
    ) -> dict[str, Any]:
        await self._enter("ListAliases")
        target = self._key("ListAliases", KeyId).key_id if KeyId else None
        names = sorted(
            n for n, a in self.account.aliases.items() if target is None or a.target == target
        )
        if Marker:
            names = [n for n in names if n > Marker]
        page = names[:Limit]
        aliases = [
            {
                "AliasName": n,
                "AliasArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:{n}",
                "TargetKeyId": self.account.aliases[n].target,
                "CreationDate": self.account.aliases[n].created,
                "LastUpdatedDate": self.account.aliases[n].updated,
            }
            for n in page
        ]
        answer: dict[str, Any] = {"Aliases": aliases, "Truncated": len(names) > Limit}
        if len(names) > Limit:
            answer["NextMarker"] = page[-1]
        return {**answer, "ResponseMetadata": self._meta()}

    async def list_resource_tags(
        self,
        KeyId: str,
        Limit: int = 50,
        Marker: str | None = None,
    ) -> dict[str, Any]:
        await self._enter("ListResourceTags")
        key = self._key("ListResourceTags", KeyId)
        key.reread[self.who] = self.account.now
        tags = [{"TagKey": k, "TagValue": v} for k, v in sorted(key.tags.items())]
        return {"Tags": tags, "Truncated": False, "ResponseMetadata": self._meta()}

    async def tag_resource(self, KeyId: str, Tags: list[dict[str, str]]) -> dict[str, Any]:
        try:
            await self._enter("TagResource")
            key = self._key("TagResource", KeyId)
        except ClientError:
            self._write_failed()
            raise
        if key.state == "PendingDeletion":
            self._write_failed()
            raise self._error("TagResource", "KMSInvalidStateException", "pending deletion")
        tags = {t["TagKey"]: t["TagValue"] for t in Tags}
        self.account.on_write(Write("TagResource", key, self.who, tags))
        self.account.tag(key, tags)
        self._wrote()
        return {"ResponseMetadata": self._meta()}

    async def update_alias(self, AliasName: str, TargetKeyId: str) -> dict[str, Any]:
        await self._enter("UpdateAlias")
        if AliasName not in self.account.aliases:
            raise self._error("UpdateAlias", "NotFoundException", f"Alias {AliasName}")
        key = self._key("UpdateAlias", TargetKeyId)
        self.account.on_write(Write("UpdateAlias", key, self.who))
        self.account.set_alias(AliasName, key)
        self._wrote()
        return {"ResponseMetadata": self._meta()}

    async def schedule_key_deletion(
        self,
        KeyId: str,
        PendingWindowInDays: int,
    ) -> dict[str, Any]:
        try:
            await self._enter("ScheduleKeyDeletion")
            key = self._key("ScheduleKeyDeletion", KeyId)
        except ClientError:
            self._write_failed()
            raise
        if key.state == "PendingDeletion":
            self._write_failed()
            raise self._error("ScheduleKeyDeletion", "KMSInvalidStateException", "pending")
        self.account.on_write(Write("ScheduleKeyDeletion", key, self.who))
        self.account.schedule(key, PendingWindowInDays)
        self._wrote()
        return {
            "KeyId": key.arn,
            "KeyState": key.state,
            "DeletionDate": key.deletion_date,
            "PendingWindowInDays": PendingWindowInDays,
            "ResponseMetadata": self._meta(),
        }


class SimTagging(_Client):
    """The Resource Groups Tagging API operations the daemon calls."""

    async def get_resources(
        self,
        ResourceTypeFilters: list[str] | None = None,
        TagFilters: list[dict[str, Any]] | None = None,
        ResourcesPerPage: int = 100,
        PaginationToken: str = "",
        ResourceARNList: list[str] | None = None,
    ) -> dict[str, Any]:
        await self._enter("GetResources")
        account = self.account
        run = CURRENT_RUN.get()
        if ResourceARNList is not None:
            keys = [k for arn in ResourceARNList if (k := account.keys.get(arn.rpartition("/")[2]))]
            if run is not None:
                run.by_arn += 1
        else:
            td_filter = next(
                (
                    f
                    for f in TagFilters or []
                    if f["Key"] == spire.TAG_TRUST_DOMAIN and f.get("Values")
                ),
                None,
            )
            keys = (
                [k for td in td_filter["Values"] for k in account.keys_of(td)]
                if td_filter
                else list(account.keys.values())
            )
        found = []
        for key in keys:
            tags = account.indexed_tags(key)
            if not tags:
                continue
            if all(
                f["Key"] in tags and (not f.get("Values") or tags[f["Key"]] in f["Values"])
                for f in TagFilters or []
            ):
                found.append((key.arn, tags))
        start = int(PaginationToken or 0)
        page = found[start : start + ResourcesPerPage]
        token = str(start + ResourcesPerPage) if start + ResourcesPerPage < len(found) else ""
        if run is not None and ResourceARNList is None:
            run.listed += [tags for _, tags in page]
        return {
            "ResourceTagMappingList": [
                {"ResourceARN": arn, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
                for arn, tags in page
            ],
            "PaginationToken": token,
            "ResponseMetadata": self._meta(),
        }

    async def tag_resources(
        self,
        ResourceARNList: list[str],
        Tags: dict[str, str],
    ) -> dict[str, Any]:
        try:
            await self._enter("TagResources")
        except ClientError:
            self._write_failed(len(ResourceARNList))
            raise
        failed: dict[str, Any] = {}
        wrote = False
        for arn in ResourceARNList:
            key = self.account.find(arn)
            if key is None or key.state == "PendingDeletion":
                failed[arn] = {
                    "StatusCode": 400,
                    "ErrorCode": "InvalidParameterException",
                    "ErrorMessage": "KMSInvalidStateException: pending deletion or gone",
                }
                self._write_failed()
                continue
            self.account.on_write(Write("TagResources", key, self.who, Tags))
            self.account.tag(key, Tags)
            wrote = True
        if wrote:
            self._wrote()
        return {"FailedResourcesMap": failed, "ResponseMetadata": self._meta()}
