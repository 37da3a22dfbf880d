"""The AWS calls the daemon makes, over aioboto3 clients for KMS and the tagging API."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

from botocore import xform_name
from botocore.exceptions import BotoCoreError, ClientError

from daemon.aws.clock import current_run_clock
from daemon.aws.errors import (
    AccessDenied,
    AwsError,
    Held,
    NotFound,
    Stopping,
    Throttled,
    translate,
)
from daemon.aws.limits import RateLimiter
from daemon.aws.stats import CallStats
from daemon.model import AliasMeta, KeyMeta

#: Operations that change something in AWS: rate-limited and never made in a dry run.
MUTATING_OPERATIONS = frozenset(
    {"TagResource", "TagResources", "UpdateAlias", "ScheduleKeyDeletion"}
)
#: Operations that tag KMS keys: rate-limited together, by the number of keys they tag.
KEY_TAGGING = frozenset({"TagResource", "TagResources"})
TAG_RESOURCES_BATCH = 20  # the tagging API's limit of ARNs per TagResources call
GET_RESOURCES_PAGE = 100
LIST_ALIASES_PAGE = 100
LIST_RESOURCE_TAGS_PAGE = 50  # KMS's maximum, and the most tags a key can have
PARTIAL_RETRIES = 3  # extra TagResources rounds for ARNs the tagging API throttled


@dataclass(frozen=True, slots=True)
class TaggedResource:
    """A resource as GetResources lists it."""

    arn: str
    tags: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class AwsOptions:
    """How to build and pace the clients."""

    region: str | None = None
    endpoint_url: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 5
    max_concurrency: int = 8
    mutating_calls_per_second: float = 5.0


class AwsApi:
    """Every AWS call the daemon makes, with counting, pacing and typed errors."""

    def __init__(
        self,
        kms: Any,
        tagging: Any,
        *,
        stats: CallStats | None = None,
        max_concurrency: int = 8,
        mutating_calls_per_second: float = 5.0,
    ) -> None:
        self._kms = kms
        self._tagging = tagging
        self.stats = stats or CallStats()
        self._slots = asyncio.Semaphore(max_concurrency)
        # AWS applies each ARN of a TagResources call to the service's own TagResource, so both
        # draw on one budget counted in keys tagged; the other operations have one each.
        tagging = RateLimiter(mutating_calls_per_second)
        self._limits = {
            op: tagging if op in KEY_TAGGING else RateLimiter(mutating_calls_per_second)
            for op in sorted(MUTATING_OPERATIONS)
        }
        meta = getattr(kms, "meta", None)
        self.region: str | None = getattr(meta, "region_name", None)
        #: Where KMS calls go (AWS_ENDPOINT_URL, an explicit endpoint, or the region's default).
        self.endpoint_url: str | None = getattr(meta, "endpoint_url", None)
        self.stopping = False  # set on shutdown: calls in flight finish, no new write starts
        #: Asked before every mutating call: a reason not to send it (a reload turned dry run on),
        #: or None.
        self.write_gate: Callable[[], str | None] = _no_gate

    async def _call(
        self, client: Any, operation: str, *, cost: int = 1, paid: bool = False, **params: Any
    ) -> dict[str, Any]:
        """Make one call; ``cost`` is what it takes from its operation's rate limit (``paid``:
        taken already)."""
        limiter = self._limits.get(operation)
        if limiter is not None:
            self._refuse_if_stopping(operation)
            if not paid:
                await limiter.acquire(cost)
                self._refuse_if_stopping(operation)  # the stop may have come while it waited
        method = getattr(client, xform_name(operation))
        async with self._slots:
            try:
                response: dict[str, Any] = await method(**params)
            except ClientError as exc:
                self._observe_date(exc.response)
                error = translate(operation, exc)
                self.stats.record(operation, _outcome(error))
                raise error from exc
            except BotoCoreError as exc:
                error = translate(operation, exc)
                self.stats.record(operation, _outcome(error))
                raise error from exc
        self._observe_date(response)
        self.stats.record(operation, "success")
        return response

    def _refuse_if_stopping(self, operation: str) -> None:
        if self.stopping:
            raise Stopping(operation, "Stopping", "the daemon is stopping; not sent")
        reason = self.write_gate()
        if reason is not None:
            raise Held(operation, "Held", f"{reason}; not sent")

    def _observe_date(self, response: Mapping[str, Any]) -> None:
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        raw = headers.get("date")
        if not raw:
            return
        try:
            aws_date = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return
        if aws_date.tzinfo is None:
            aws_date = aws_date.replace(tzinfo=UTC)
        clock = current_run_clock()
        if clock is not None:
            clock.observe(aws_date)

    # --- reads -----------------------------------------------------------------------------------

    async def get_resources(self, tag_filters: Mapping[str, Sequence[str]]) -> list[TaggedResource]:
        """List KMS keys whose tags match every filter (values of one key are OR-ed)."""
        filters = [{"Key": k, "Values": list(v)} for k, v in tag_filters.items()]
        found: list[TaggedResource] = []
        token = ""
        while True:
            params: dict[str, Any] = {
                "ResourceTypeFilters": ["kms:key"],
                "TagFilters": filters,
                "ResourcesPerPage": GET_RESOURCES_PAGE,
            }
            if token:
                params["PaginationToken"] = token
            page = await self._call(self._tagging, "GetResources", **params)
            found += (TaggedResource(arn, tags) for arn, tags in _tag_mappings(page))
            token = page.get("PaginationToken") or ""
            if not token:
                return found

    async def get_resources_by_arn(self, arns: Sequence[str]) -> dict[str, dict[str, str]]:
        """Return the tags of the given resources (untagged ones are absent), 100 ARNs a call."""
        found: dict[str, dict[str, str]] = {}
        for batch in _chunks(arns, GET_RESOURCES_PAGE):
            page = await self._call(self._tagging, "GetResources", ResourceARNList=list(batch))
            found.update(_tag_mappings(page))
        return found

    async def _kms_pages(self, operation: str, **params: Any) -> AsyncIterator[Mapping[str, Any]]:
        """Every page of a KMS list operation (Marker in, NextMarker and Truncated out)."""
        marker: str | None = None
        while True:
            more: dict[str, Any] = {"Marker": marker} if marker else {}
            page = await self._call(self._kms, operation, **params, **more)
            yield page
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                return

    async def iter_aliases(self, key_id: str | None = None) -> AsyncIterator[AliasMeta]:
        """Yield aliases of the account (or of one key), following every page."""
        params: dict[str, Any] = {"Limit": LIST_ALIASES_PAGE}
        if key_id is not None:
            params["KeyId"] = key_id
        async for page in self._kms_pages("ListAliases", **params):
            for item in page.get("Aliases", []):
                if item.get("AliasName"):
                    yield AliasMeta(
                        item["AliasName"],
                        item.get("TargetKeyId"),
                        item.get("LastUpdatedDate"),
                        item.get("CreationDate"),
                    )

    async def list_aliases(self, key_id: str | None = None) -> list[AliasMeta]:
        """Return every alias of the account, or of one key."""
        return [alias async for alias in self.iter_aliases(key_id)]

    async def probe_list_aliases(self) -> None:
        """Make one ListAliases call of one entry, to check the permission."""
        await self._call(self._kms, "ListAliases", Limit=1)

    async def describe_key(self, key: str) -> KeyMeta:
        """Describe a key by key ID, key ARN, alias name or alias ARN."""
        response = await self._call(self._kms, "DescribeKey", KeyId=key)
        meta = response["KeyMetadata"]
        multi_region = meta.get("MultiRegion")
        return KeyMeta(
            arn=meta["Arn"],
            key_id=meta["KeyId"],
            state=meta.get("KeyState") or ("Enabled" if meta.get("Enabled") else "Unknown"),
            creation_date=meta.get("CreationDate"),
            description=meta.get("Description") or "",
            key_manager=meta.get("KeyManager"),
            key_usage=meta.get("KeyUsage"),
            key_spec=meta.get("KeySpec") or meta.get("CustomerMasterKeySpec"),
            multi_region=multi_region if isinstance(multi_region, bool) else None,
            deletion_date=meta.get("DeletionDate"),
        )

    async def list_resource_tags(self, key_id: str) -> dict[str, str]:
        """Return a key's tags as KMS itself holds them (strongly consistent, unlike the index).

        A key has at most 50 tags, one page's worth; further pages are followed all the same.
        """
        tags: dict[str, str] = {}
        pages = self._kms_pages("ListResourceTags", KeyId=key_id, Limit=LIST_RESOURCE_TAGS_PAGE)
        async for page in pages:
            for tag in page.get("Tags", []):
                tags[str(tag["TagKey"])] = str(tag.get("TagValue", ""))
        return tags

    # --- writes ----------------------------------------------------------------------------------

    async def tag_resource(self, key_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on one key with kms:TagResource (existing values are overwritten)."""
        await self._call(
            self._kms,
            "TagResource",
            KeyId=key_id,
            Tags=[{"TagKey": k, "TagValue": v} for k, v in tags.items()],
        )

    async def tag_resources(
        self, arns: Sequence[str], tags: Mapping[str, str]
    ) -> dict[str, AwsError]:
        """Set the same tags on many keys with tag:TagResources, 20 ARNs a call.

        Returns the ARNs that failed with their error. ARNs the tagging API throttled in a partial
        failure are retried, and only those. A call that fails as a whole fails its own ARNs and
        the next batches still go; only a denial of tag:TagResources before any call got through
        raises, so that the caller can fall back to kms:TagResource.

        A call costs the rate limit one unit per ARN: AWS tags each key through KMS's own
        TagResource, whose quota the SPIRE servers share.
        """
        failed: dict[str, AwsError] = {}
        any_through = False
        for batch in _chunks(arns, TAG_RESOURCES_BATCH):
            pending = list(batch)
            for attempt in range(PARTIAL_RETRIES + 1):
                try:
                    response = await self._call(
                        self._tagging,
                        "TagResources",
                        cost=len(pending),
                        ResourceARNList=pending,
                        Tags=dict(tags),
                    )
                except AwsError as exc:
                    if isinstance(exc, AccessDenied) and not any_through:
                        raise
                    failed.update(dict.fromkeys(pending, exc))
                    break
                any_through = True
                errors = _failed_resources(response)
                retry = [arn for arn, err in errors.items() if isinstance(err, Throttled)]
                for arn, err in errors.items():
                    if arn not in retry or attempt == PARTIAL_RETRIES:
                        failed[arn] = err
                if not retry or attempt == PARTIAL_RETRIES:
                    break
                pending = retry
                await asyncio.sleep(0.2 * 2**attempt)
        return failed

    async def update_alias(self, alias_name: str, target_key_id: str) -> None:
        """Point an alias at a key; to the same target, this bumps its LastUpdatedDate."""
        await self._call(self._kms, "UpdateAlias", AliasName=alias_name, TargetKeyId=target_key_id)

    async def refresh_alias(self, alias_name: str, key_arn: str, key_id: str) -> str | None:
        """UpdateAlias to the same target, if the alias still resolves to ``key_arn``.

        UpdateAlias has no condition, so the alias is read again right before the write (as
        SPIRE's own alias refresh does): a rotation since the caller read it is left alone. The
        write's rate-limit token is taken before the read, so that nothing waits between the
        two. Returns None when refreshed, else the ARN the alias resolves to now ("" when the
        alias no longer exists).
        """
        limiter = self._limits.get("UpdateAlias")
        if limiter is not None:
            self._refuse_if_stopping("UpdateAlias")
            await limiter.acquire(1)
            self._refuse_if_stopping("UpdateAlias")
        try:
            current = await self.describe_key(alias_name)
        except NotFound:
            return ""
        if current.arn != key_arn:
            return current.arn
        await self._call(
            self._kms, "UpdateAlias", paid=True, AliasName=alias_name, TargetKeyId=key_id
        )
        return None

    async def schedule_key_deletion(self, key_id: str, pending_window_days: int) -> None:
        """Schedule a key's deletion after ``pending_window_days`` (7-30)."""
        await self._call(
            self._kms,
            "ScheduleKeyDeletion",
            KeyId=key_id,
            PendingWindowInDays=pending_window_days,
        )


def _no_gate() -> str | None:
    return None


def _tag_mappings(page: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """The ARNs and tags of a GetResources page (tag keys interned: thousands of keys share
    SPIRE's five)."""
    for item in page.get("ResourceTagMappingList", []):
        if item.get("ResourceARN"):
            tags = {sys.intern(t["Key"]): t.get("Value", "") for t in item.get("Tags", [])}
            yield item["ResourceARN"], tags


def _failed_resources(response: Mapping[str, Any]) -> dict[str, AwsError]:
    errors: dict[str, AwsError] = {}
    for arn, info in (response.get("FailedResourcesMap") or {}).items():
        code = str(info.get("ErrorCode") or "Unknown")
        message = str(info.get("ErrorMessage") or "")
        status = info.get("StatusCode")
        if "throttl" in code.lower() or "throttl" in message.lower() or status == 429:
            errors[arn] = Throttled("TagResources", code, message)
        else:
            fake = ClientError(
                {
                    "Error": {"Code": code, "Message": message},
                    "ResponseMetadata": {"HTTPStatusCode": status or 400},
                },
                "TagResources",
            )
            errors[arn] = translate("TagResources", fake)
    return errors


def _outcome(error: AwsError) -> str:
    if isinstance(error, Throttled):
        return "throttled"
    if isinstance(error, AccessDenied):
        return "denied"
    if isinstance(error, NotFound):
        return "not_found"
    return "error"


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
