"""A fault-injecting reverse proxy in front of the KMS emulator that makes it behave like AWS.

moto answers every call it understands and never fails the way AWS does: no key-state rules, no
alias dates, no ListAliases paging, no JSON ``AccessDeniedException``, no throttling, no 5xx, no
partial ``FailedResourcesMap``. This proxy sits between the daemon's aioboto3 clients and the
emulator, forwards every request, and lets a test choose, per test, both what AWS does that moto
does not (:meth:`FaultProxy.emulate_aws`) and which faults to inject::

    with FaultProxy(emulator.endpoint_url, emulator=emulator) as proxy:
        proxy.emulate_aws()                              # key states, ARNs, alias dates, paging
        proxy.deny("GetResources")                       # JSON AccessDeniedException, always
        proxy.throttle("TagResources", times=2)          # the first two calls, then pass through
        proxy.throttle_rate(0.5, seed=7)                 # half of all calls, seeded
        proxy.throttle_bursts(3, every=10)               # calls 1-3, 11-13, ... of every operation
        proxy.fail_resources([arn])                      # arn lands in FailedResourcesMap once
        proxy.server_error("TagResources", skip=1)       # the first call passes, the rest fail
        proxy.reset_connection("DescribeKey", times=1)   # drop the connection without an answer
        proxy.delay("ListAliases", 0.2)                  # latency
        proxy.before("ScheduleKeyDeletion", callback)    # run callback(body) first (a racing actor)
        proxy.after(MUTATING, kill, nth=3)               # after the 3rd mutating call reached the
                                                         # emulator, before its answer goes back
        proxy.barrier("ScheduleKeyDeletion", parties=2)  # hold calls on one key until 2 arrived
        proxy.set_alias_date("alias/x", when)            # ListAliases reports this LastUpdatedDate
        ...  # point clients at proxy.endpoint_url
        assert proxy.count("ScheduleKeyDeletion") == 0
        assert proxy.successes("ScheduleKeyDeletion")    # the calls the emulator carried out

Operations are chosen by the request's ``X-Amz-Target`` header, either in full
(``TrentService.TagResource``, ``ResourceGroupsTaggingAPI_20170126.GetResources``), by the
operation name alone (``TagResource``; note ``TagResource`` and ``TagResources`` are different
operations), by :data:`ANY` (``"*"``, every operation) or by :data:`MUTATING` (``"mutating"``,
every operation in :data:`MUTATING_OPERATIONS`). Every request is counted per operation, faulted
or not, its JSON body kept, and its answer recorded as an :class:`Exchange` (status, error code,
whether it reached the emulator), so a test can assert exactly which calls a run made and which
of them took effect.

AWS behaviours (:data:`AWS_BEHAVIOURS`, each selectable, all off until :meth:`emulate_aws`):

``key_states``
    KMS key-state rules: TagResource, UntagResource and ScheduleKeyDeletion on a key pending
    deletion, and CancelKeyDeletion on a key that is not, fail with ``KMSInvalidStateException``
    (HTTP 400); tag:TagResources reports a pending (or missing) key's ARN in
    ``FailedResourcesMap`` and tags the others. Calls that change one key are serialised per key,
    so two racing clients see AWS's atomic check-and-set (one wins, the other is refused).
``key_arns``
    ScheduleKeyDeletion and CancelKeyDeletion accept a key ARN (normalised to the key ID, which
    moto needs: it answers a key ARN with HTTP 500).
``alias_dates``
    ListAliases entries carry ``CreationDate`` and ``LastUpdatedDate``: tracked from the
    CreateAlias and UpdateAlias calls that went through the proxy, or set with
    :meth:`set_alias_date`; an alias the proxy never saw changed is dated when first listed.
``alias_paging``
    ListAliases honours ``Limit`` (1-100, default 50) and ``Marker``, answering ``Truncated`` and
    ``NextMarker``. The emulator pages as well; the proxy reads all of its pages, then pages the
    dated list itself.
``validation``
    ScheduleKeyDeletion ``PendingWindowInDays`` outside 7-30 fails with ``ValidationException``
    (moto accepts it and, below 7, silently does nothing).
``signing_time``
    A request signed (``X-Amz-Date``) more than 5 minutes off AWS's clock fails with
    ``InvalidSignatureException`` ("Signature expired" / "Signature not yet current"), as AWS
    refuses it. Checked after the faults: AWS's front end can answer 503 before it authenticates.

Besides the behaviours, what the answers say of AWS's clock and index can be made wrong:
:meth:`FaultProxy.date_offset` shifts the ``Date`` header of every answer, :meth:`drop_date`
removes it, and :meth:`stale_index` makes GetResources serve old tags for some keys while KMS
itself (ListResourceTags, the keys' real state) holds the new ones, as the tagging index lags.

Key states are read from moto's backend in-process when the proxy is given the ``emulator``, else
with a DescribeKey to the emulator. The proxy's clock (alias dates, the ``Date`` header of the
answers it makes up) follows :attr:`Emulator.clock_skew` when it knows the emulator.

Not modelled: key states other than Enabled, Disabled and PendingDeletion; conditional alias
updates (AWS has none either: a racing UpdateAlias simply wins or loses). ListKeys and GetResources
paging come from the emulator.

The proxy runs aiohttp on its own event loop in a daemon thread, so it serves synchronous tests,
``asyncio.run`` inside the CLI, subprocesses and pytest-asyncio tests alike. Callbacks run on that
thread. Responses from the emulator are passed through byte for byte with their headers (including
``Date``, which the daemon's clock guard reads) unless a behaviour rewrites their body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, ClientTimeout, web

from devtools.service import Service

if TYPE_CHECKING:
    from devtools.emulator import Emulator

__all__ = [
    "ANY",
    "AWS_BEHAVIOURS",
    "DEFAULT_PRINCIPAL",
    "MUTATING",
    "MUTATING_OPERATIONS",
    "Exchange",
    "FaultProxy",
    "Rule",
    "key_id_of",
]

#: The principal named in the AccessDenied messages the proxy makes up.
DEFAULT_PRINCIPAL = "arn:aws:iam::123456789012:user/ci"

#: A rule operation matching every request.
ANY = "*"
#: A rule operation matching every request of :data:`MUTATING_OPERATIONS`.
MUTATING = "mutating"
#: Operations that change state in AWS (KMS and the tagging API).
MUTATING_OPERATIONS = frozenset(
    {
        "TagResource",
        "UntagResource",
        "TagResources",
        "UntagResources",
        "UpdateAlias",
        "CreateAlias",
        "DeleteAlias",
        "ScheduleKeyDeletion",
        "CancelKeyDeletion",
        "EnableKey",
        "DisableKey",
        "CreateKey",
    }
)
#: The AWS behaviours :meth:`FaultProxy.emulate_aws` can turn on.
AWS_BEHAVIOURS = frozenset(
    {"key_states", "key_arns", "alias_dates", "alias_paging", "validation", "signing_time"}
)

_JSON_11 = "application/x-amz-json-1.1"
# Hop-by-hop headers and those aiohttp recomputes; never copied across the proxy.
_SKIP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
)
_IAM_PREFIX = {"TrentService": "kms", "ResourceGroupsTaggingAPI_20170126": "tag"}
_TAGGING_PREFIX = "ResourceGroupsTaggingAPI_20170126"
_TAGGING_OPERATIONS = frozenset(
    {"GetResources", "TagResources", "UntagResources", "GetTagKeys", "GetTagValues"}
)
# KMS calls on one key whose outcome depends on its state: serialised per key.
_KEY_STATE_OPERATIONS = frozenset(
    {"TagResource", "UntagResource", "ScheduleKeyDeletion", "CancelKeyDeletion", "TagResources"}
)
_PENDING = "PendingDeletion"
_SIGNING_WINDOW = 300.0  # AWS refuses a request signed more than 5 minutes off its clock
_ALIAS_PAGE_DEFAULT = 50
_ALIAS_PAGE_MAX = 100


def key_id_of(ref: str) -> str:
    """Return the key ID of a key ARN (``arn:...:key/<id>``); anything else is returned as is."""
    if ref.startswith("arn:") and ":key/" in ref:
        return ref.rpartition(":key/")[2]
    return ref


def _operation(target: str) -> str:
    return target.rpartition(".")[2]


def _is_tagging(operation: str) -> bool:
    return operation.startswith(_TAGGING_PREFIX) or _operation(operation) in _TAGGING_OPERATIONS


def _mentioned_keys(body: Mapping[str, Any]) -> set[str]:
    """Every key a request body names, in any field (key IDs where an ARN was given)."""
    found = {str(a) for a in body.get("ResourceARNList") or []}
    found.update(str(body[f]) for f in ("KeyId", "TargetKeyId") if body.get(f))
    return {key_id_of(k) for k in found}


def _named_keys(operation: str, body: Mapping[str, Any]) -> tuple[str, ...]:
    """The keys a request names (key IDs where an ARN was given), for filters and records."""
    if operation in ("TagResources", "UntagResources"):
        arns = body.get("ResourceARNList") or []
        return tuple(key_id_of(str(a)) for a in arns)
    if operation in ("UpdateAlias", "CreateAlias"):
        target = body.get("TargetKeyId")
        return (key_id_of(str(target)),) if target else ()
    ref = body.get("KeyId")
    return (key_id_of(str(ref)),) if ref else ()


@dataclass(slots=True)
class _Gate:
    """One barrier group: how many requests arrived, and the event that releases them."""

    arrived: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class Rule:
    """One fault, hook or wait for the requests of ``operation``.

    ``kind`` is ``"error"`` (answer with a JSON error), ``"throttle"`` (answer with the service's
    throttling error), ``"reset"`` (drop the connection), ``"failed_resources"`` (rewrite
    TagResources' ``FailedResourcesMap``), ``"hook"`` (call ``callback(body)`` first), ``"after"``
    (call ``callback(body)`` once the emulator has answered, before the answer goes back),
    ``"delay"`` (wait ``seconds``) or ``"barrier"`` (hold requests until ``parties`` arrived).
    Errors, throttles, resets and failed resources are faults: the first matching, unexhausted one
    wins. Hooks, delays and barriers apply besides them.

    The first ``skip`` matching requests pass untouched (for ``"after"``: the first ``skip`` that
    reached the emulator). After that, ``times`` None means always; otherwise the rule applies to
    ``times`` requests and then lets them through. For ``kind == "failed_resources"``, ``times``
    counts per ARN: each listed ARN fails that many times. A fault applies to a matching request
    only with probability ``rate`` (drawn from ``rng``), and, when ``period`` is set, only to the
    first ``burst`` of every ``period`` matching requests. ``where`` narrows the matching requests
    by their JSON body.
    """

    operation: str
    kind: str
    status: int = 400
    error_type: str = ""
    message: str = ""
    times: int | None = None
    arns: dict[str, int] = field(default_factory=dict)  # ARN -> failures left
    entry: Mapping[str, Any] = field(default_factory=dict)  # FailedResourcesMap value
    callback: Callable[[dict[str, Any]], object] | None = None  # for hooks
    skip: int = 0  # matching requests still to let through before the rule applies
    hits: int = 0  # how often the rule has fired
    rate: float = 1.0  # chance that a matching request is faulted
    rng: random.Random | None = None  # the draws for ``rate`` (seeded for reproducible runs)
    burst: int = 0  # with ``period``: the first ``burst`` of every ``period`` requests
    period: int = 0
    seen: int = 0  # matching requests considered for bursts
    where: Callable[[Mapping[str, Any]], bool] | None = None  # body filter
    seconds: float = 0.0  # for delays
    parties: int = 0  # for barriers: requests to wait for
    per_key: bool = False  # for barriers: one group per key named
    timeout: float = 5.0  # for barriers: release anyway after this long
    after_forward: bool = False  # for resets: the emulator acts first, then the answer is lost
    groups: dict[str, _Gate] = field(default_factory=dict)  # barrier groups

    def matches(self, target: str) -> bool:
        """Whether the rule is for the operation of this ``X-Amz-Target``."""
        if self.operation == ANY:
            return bool(target)
        if self.operation == MUTATING:
            return _operation(target) in MUTATING_OPERATIONS
        return self.operation in (target, _operation(target))

    def exhausted(self) -> bool:
        """Whether the rule has fired as often as it should."""
        if self.kind == "failed_resources":
            return not any(self.arns.values())
        return self.times is not None and self.hits >= self.times

    def applies(self, target: str, body: Mapping[str, Any]) -> bool:
        """Whether the rule matches this request and is still live (skips not counted)."""
        if not target or not self.matches(target) or self.exhausted():
            return False
        return self.where is None or bool(self.where(body))

    def draw(self) -> bool:
        """Whether this matching request is affected, by the rule's bursts and rate."""
        if self.period:
            position = self.seen % self.period
            self.seen += 1
            if position >= self.burst:
                return False
        if self.rate < 1.0:
            rng = self.rng or random.Random()
            if rng.random() >= self.rate:
                return False
        return True


@dataclass(slots=True)
class Exchange:
    """One request the proxy received and how it was answered."""

    index: int
    operation: str  # ``TagResource``, ``GetResources``...
    target: str  # the full ``X-Amz-Target``
    body: dict[str, Any]
    keys: tuple[str, ...]  # key IDs (or alias names) the request names
    status: int | None = None  # None: no answer (connection dropped, or still in flight)
    error: str | None = None  # the error code of a failed answer
    forwarded: bool = False  # whether the emulator saw the request
    answered_by: str = ""  # "emulator", "proxy", or "" when the connection was dropped
    at: float = 0.0  # when it arrived (time.time())
    done: bool = False  # answered or dropped: the proxy is finished with it
    #: The client's User-Agent: which of several actors on one account sent it (aws-sdk-go for
    #: a real SPIRE server, Botocore for the daemon).
    agent: str = ""

    @property
    def effective(self) -> bool:
        """Whether the emulator carried the request out (answered 200, or the answer was lost
        after the change)."""
        return self.forwarded and self.status in (200, None)

    @property
    def ok(self) -> bool:
        """Whether the call succeeded (HTTP 200) as the client saw it."""
        return self.status == 200


@dataclass(frozen=True, slots=True)
class _KeyInfo:
    key_id: str
    arn: str
    state: str


class _Reset(Exception):
    """Drop the client's connection instead of answering."""


class FaultProxy(Service):
    """A reverse proxy to ``upstream`` that makes it behave like AWS, injects faults by operation
    and records requests.

    Use as a context manager or call :meth:`start` / :meth:`stop`; :meth:`reset` drops the rules,
    counters and alias dates and restores the AWS behaviours given here (for reuse across tests).
    ``emulator`` lets the proxy read key states in-process and follow its clock skew.
    """

    def __init__(
        self,
        upstream: str,
        *,
        emulator: Emulator | None = None,
        aws: bool | Iterable[str] = False,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.emulator = emulator
        if aws is True:
            self._default_behaviours = frozenset(AWS_BEHAVIOURS)
        elif aws is False:
            self._default_behaviours = frozenset()
        else:
            self._default_behaviours = self._check_behaviours(aws)
        self.behaviours: frozenset[str] = self._default_behaviours
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._counts: Counter[str] = Counter()
        self._bodies: list[tuple[str, dict[str, Any]]] = []
        self._exchanges: list[Exchange] = []
        # alias name -> (CreationDate, LastUpdatedDate), Unix seconds on AWS's clock
        self._alias_dates: dict[str, tuple[float, float]] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._date_offset: float | None = 0.0  # None: no Date header at all
        self._stale_index: dict[str, dict[str, str]] = {}  # key ARN -> tags GetResources shows
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._endpoint_url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start serving on 127.0.0.1 (an OS-assigned port) in a background thread."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        port = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        self._endpoint_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop serving and end the background thread (no-op when not running)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None
        self._endpoint_url = None

    async def _serve(self) -> int:
        self._session = ClientSession(
            timeout=ClientTimeout(total=60), trust_env=False, auto_decompress=False
        )
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp exposes the bound port nowhere else
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ AWS behaviours

    @staticmethod
    def _check_behaviours(names: Iterable[str]) -> frozenset[str]:
        chosen = frozenset(names)
        unknown = chosen - AWS_BEHAVIOURS
        if unknown:
            raise ValueError(
                f"unknown AWS behaviour(s) {sorted(unknown)}; choose from {sorted(AWS_BEHAVIOURS)}"
            )
        return chosen

    def emulate_aws(self, *behaviours: str) -> None:
        """Turn on AWS behaviours moto lacks (all of :data:`AWS_BEHAVIOURS` when none is named)."""
        chosen = self._check_behaviours(behaviours) if behaviours else AWS_BEHAVIOURS
        with self._lock:
            self.behaviours = frozenset(self.behaviours | chosen)

    def emulate_moto(self, *behaviours: str) -> None:
        """Turn AWS behaviours off again (all of them when none is named)."""
        chosen = self._check_behaviours(behaviours) if behaviours else AWS_BEHAVIOURS
        with self._lock:
            self.behaviours = frozenset(self.behaviours - chosen)

    def aws_time(self) -> float:
        """AWS's clock as the proxy models it: local time plus the emulator's clock skew."""
        skew = self.emulator.clock_skew.total_seconds() if self.emulator is not None else 0.0
        return time.time() + skew

    def set_alias_date(
        self, alias_name: str, when: datetime, *, created: datetime | None = None
    ) -> None:
        """Make ListAliases report ``when`` as the alias's LastUpdatedDate (``alias_dates``).

        ``created`` sets its CreationDate (default: kept, or ``when`` for an alias not yet dated).
        """
        if when.tzinfo is None:
            raise ValueError("when must be timezone-aware")
        with self._lock:
            known = self._alias_dates.get(alias_name)
            if created is not None:
                first = created.timestamp()
            else:
                first = known[0] if known else when.timestamp()
            self._alias_dates[alias_name] = (min(first, when.timestamp()), when.timestamp())

    def alias_date(self, alias_name: str) -> float | None:
        """The LastUpdatedDate (Unix seconds) the proxy reports for an alias, if it dated it."""
        with self._lock:
            known = self._alias_dates.get(alias_name)
        return known[1] if known else None

    def date_offset(self, seconds: float) -> None:
        """Shift the ``Date`` header of every answer by ``seconds`` (what AWS's clock seems)."""
        with self._lock:
            self._date_offset = seconds

    def drop_date(self) -> None:
        """Send every answer without a ``Date`` header."""
        with self._lock:
            self._date_offset = None

    def stale_index(self, tags_by_arn: Mapping[str, Mapping[str, str]]) -> None:
        """Make GetResources list these keys with these (old) tags; KMS keeps the real ones."""
        with self._lock:
            self._stale_index.update({arn: dict(tags) for arn, tags in tags_by_arn.items()})

    # ------------------------------------------------------------------ rules

    def reset(self) -> None:
        """Drop every rule, counter, recorded request and alias date; restore the behaviours
        given to the constructor."""
        with self._lock:
            self._rules.clear()
            self._counts.clear()
            self._bodies.clear()
            self._exchanges.clear()
            self._alias_dates.clear()
            self._date_offset = 0.0
            self._stale_index.clear()
            self.behaviours = self._default_behaviours

    def clear_rules(self) -> None:
        """Drop every rule, keeping the counters."""
        with self._lock:
            self._rules.clear()

    def add(self, rule: Rule) -> Rule:
        """Add a rule; the first matching, unexhausted fault wins. Returns it (``.hits``)."""
        with self._lock:
            self._rules.append(rule)
        return rule

    @staticmethod
    def _only(keys: Iterable[str] | None) -> Callable[[Mapping[str, Any]], bool] | None:
        """A body filter for requests naming one of ``keys`` (key IDs or ARNs)."""
        if keys is None:
            return None
        wanted = frozenset(key_id_of(k) for k in keys)

        def where(body: Mapping[str, Any]) -> bool:
            return not wanted.isdisjoint(_mentioned_keys(body))

        return where

    def fail(
        self,
        operation: str,
        error_type: str,
        message: str = "injected by FaultProxy",
        *,
        status: int = 400,
        times: int | None = None,
        skip: int = 0,
        keys: Iterable[str] | None = None,
        rate: float = 1.0,
        seed: int | None = None,
    ) -> Rule:
        """Answer ``operation`` with a JSON error ``{"__type": error_type, "message": ...}``.

        ``keys`` limits the rule to requests naming one of those keys (as a key policy would);
        ``rate`` faults only that share of the matching requests (drawn with ``seed``).
        """
        return self.add(
            Rule(
                operation,
                "error",
                status,
                error_type,
                message,
                times,
                skip=skip,
                where=self._only(keys),
                rate=rate,
                rng=random.Random(seed),
            )
        )

    def deny(
        self,
        operation: str,
        *,
        principal: str = DEFAULT_PRINCIPAL,
        action: str | None = None,
        times: int | None = None,
        skip: int = 0,
        keys: Iterable[str] | None = None,
    ) -> Rule:
        """Answer with AccessDeniedException worded as IAM words it for an identity policy.

        With ``keys``, only requests naming those keys are denied (a key policy's Deny).
        """
        action = action or self._iam_action(operation)
        message = (
            f"User: {principal} is not authorized to perform: {action} because no "
            f"identity-based policy allows the {action} action"
        )
        return self.fail(
            operation, "AccessDeniedException", message, times=times, skip=skip, keys=keys
        )

    def throttle(
        self,
        operation: str,
        *,
        times: int | None = None,
        skip: int = 0,
        error_type: str | None = None,
    ) -> Rule:
        """Answer with a throttling error (``ThrottledException`` for the tagging API, as AWS
        spells it there, ``ThrottlingException`` for KMS)."""
        if error_type is None:
            if operation in (ANY, MUTATING):
                return self.add(Rule(operation, "throttle", times=times, skip=skip))
            error_type = "ThrottledException" if _is_tagging(operation) else "ThrottlingException"
        return self.fail(operation, error_type, "Rate exceeded", times=times, skip=skip)

    def throttle_rate(
        self,
        rate: float,
        *,
        operation: str = ANY,
        seed: int | None = 0,
        times: int | None = None,
    ) -> Rule:
        """Throttle a share ``rate`` (0-1) of the requests of ``operation`` (default: all),
        drawn from a generator seeded with ``seed``; each service answers with its own error."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        return self.add(
            Rule(
                operation,
                "throttle",
                times=times,
                rate=rate,
                rng=random.Random(seed),
            )
        )

    def throttle_bursts(
        self, length: int, *, every: int, operation: str = ANY, skip: int = 0
    ) -> Rule:
        """Throttle bursts: of every ``every`` requests of ``operation``, the first ``length``."""
        if not 0 < length <= every:
            raise ValueError("need 0 < length <= every")
        return self.add(Rule(operation, "throttle", skip=skip, burst=length, period=every))

    def server_error(
        self,
        operation: str,
        *,
        times: int | None = None,
        skip: int = 0,
        rate: float = 1.0,
        seed: int | None = None,
    ) -> Rule:
        """Answer with HTTP 500 ``InternalFailure`` (botocore retries it)."""
        return self.fail(
            operation,
            "InternalFailure",
            "We encountered an internal error.",
            status=500,
            times=times,
            skip=skip,
            rate=rate,
            seed=seed,
        )

    def invalid_state(self, operation: str, *, times: int | None = None, skip: int = 0) -> Rule:
        """Answer with ``KMSInvalidStateException``, as KMS does for a key pending deletion."""
        return self.fail(
            operation,
            "KMSInvalidStateException",
            "arn:aws:kms:us-east-1:123456789012:key/injected is pending deletion.",
            times=times,
            skip=skip,
        )

    def reset_connection(
        self,
        operation: str,
        *,
        times: int | None = None,
        skip: int = 0,
        after_forward: bool = False,
        rate: float = 1.0,
        seed: int | None = None,
    ) -> Rule:
        """Drop the connection without an answer (botocore retries it). With ``after_forward``
        the emulator carries the request out first: the change happened, the answer is lost."""
        return self.add(
            Rule(
                operation,
                "reset",
                times=times,
                skip=skip,
                after_forward=after_forward,
                rate=rate,
                rng=random.Random(seed),
            )
        )

    def delay(
        self, operation: str, seconds: float, *, times: int | None = None, skip: int = 0
    ) -> Rule:
        """Hold matching requests ``seconds`` before they are answered (latency)."""
        return self.add(Rule(operation, "delay", times=times, skip=skip, seconds=seconds))

    def before(
        self,
        operation: str,
        callback: Callable[[dict[str, Any]], object],
        *,
        times: int | None = None,
    ) -> Rule:
        """Call ``callback(request_body)`` before ``operation`` is answered (by a fault rule or
        the emulator), e.g. to change the emulator's state as a concurrent actor would. It runs
        on the proxy's thread; hooks do not stop other rules from applying."""
        return self.add(Rule(operation, "hook", times=times, callback=callback))

    def after(
        self,
        operation: str,
        callback: Callable[[dict[str, Any]], object],
        *,
        nth: int = 1,
        times: int | None = 1,
    ) -> Rule:
        """Call ``callback(request_body)`` once the ``nth`` request of ``operation`` (e.g.
        :data:`MUTATING`) has been carried out by the emulator, before its answer goes back;
        ``times`` requests from there on (None: every one). Requests a fault answered do not
        count. Runs on the proxy's thread."""
        if nth < 1:
            raise ValueError("nth counts from 1")
        return self.add(Rule(operation, "after", times=times, skip=nth - 1, callback=callback))

    def kill_after(self, operation: str, nth: int, pid: int | Callable[[], int | None]) -> Rule:
        """SIGKILL a process once the ``nth`` request of ``operation`` was carried out, before
        the process gets the answer. ``pid`` may be a callable (the process starts later)."""

        def kill(_: dict[str, Any]) -> None:
            target = pid() if callable(pid) else pid
            if target:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)

        return self.after(operation, kill, nth=nth)

    def barrier(
        self,
        operation: str,
        *,
        parties: int = 2,
        per_key: bool = True,
        timeout: float = 5.0,
        where: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> Rule:
        """Hold requests of ``operation`` until ``parties`` of them arrived (per key named, with
        ``per_key``), then let them through together; after ``timeout`` seconds, anyway. Forces
        two clients' calls on one key to race. ``where`` narrows the requests held by body."""
        return self.add(
            Rule(
                operation,
                "barrier",
                parties=parties,
                per_key=per_key,
                timeout=timeout,
                where=where,
            )
        )

    def fail_resources(
        self,
        arns: Iterable[str],
        *,
        times: int = 1,
        entry: Mapping[str, Any] | None = None,
        operation: str = "TagResources",
    ) -> Rule:
        """Report ``arns`` in TagResources' ``FailedResourcesMap`` (``times`` times each).

        The ARNs are taken out of the request before it reaches the emulator, so, as in AWS, a
        failed ARN is not tagged; the others are. The default entry is a throttle: ``{"StatusCode":
        429, "ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"}``.
        """
        failure = dict(
            entry
            or {
                "StatusCode": 429,
                "ErrorCode": "ThrottlingException",
                "ErrorMessage": "Rate exceeded",
            }
        )
        rule = Rule(operation, "failed_resources", arns=dict.fromkeys(arns, times), entry=failure)
        return self.add(rule)

    @staticmethod
    def _iam_action(operation: str) -> str:
        service, _, name = operation.rpartition(".")
        if service:
            return f"{_IAM_PREFIX.get(service, 'kms')}:{name}"
        return f"{'tag' if name in _TAGGING_OPERATIONS else 'kms'}:{name}"

    # ------------------------------------------------------------------ counters and records

    def count(self, operation: str | None = None) -> int:
        """Requests received for ``operation`` (full target, name, ANY or MUTATING), or in total
        when None."""
        with self._lock:
            if operation is None:
                return sum(self._counts.values())
            return sum(n for target, n in self._counts.items() if _same(operation, target))

    def counts(self) -> dict[str, int]:
        """Requests received per operation name (``TagResource``, ``GetResources``...)."""
        with self._lock:
            totals: Counter[str] = Counter()
            for target, n in self._counts.items():
                totals[_operation(target)] += n
            return dict(totals)

    def requests(self, operation: str) -> list[dict[str, Any]]:
        """The JSON bodies of the requests received for ``operation``, in order."""
        with self._lock:
            return [body for target, body in self._bodies if _same(operation, target)]

    def exchanges(self, operation: str | None = None) -> list[Exchange]:
        """Every request received (for ``operation``, when given) and its answer, in order."""
        with self._lock:
            return [e for e in self._exchanges if operation is None or _same(operation, e.target)]

    def idle(self) -> bool:
        """Whether every request received so far has been answered (or dropped)."""
        with self._lock:
            return all(e.done for e in self._exchanges)

    def successes(self, operation: str) -> list[Exchange]:
        """The requests of ``operation`` the emulator carried out and answered with 200."""
        return [e for e in self.exchanges(operation) if e.forwarded and e.ok]

    # ------------------------------------------------------------------ serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        operation = _operation(target)
        exchange = Exchange(0, operation, target, parsed, _named_keys(operation, parsed))
        exchange.at = time.time()
        exchange.agent = request.headers.get("User-Agent", "")
        with self._lock:
            if target:
                self._counts[target] += 1
                self._bodies.append((target, parsed))
                exchange.index = len(self._exchanges)
                self._exchanges.append(exchange)
            hooks = self._select(target, parsed, "hook")
            waits = self._select(target, parsed, "delay", "barrier")
            rule = self._pick(target, parsed)
            fault = self._fire(rule, parsed, target) if rule is not None else None
        for hook in hooks:
            assert hook.callback is not None
            hook.callback(parsed)
        for wait in waits:
            await self._wait(wait, parsed, operation)
        try:
            response = await self._respond(request, target, parsed, body, fault, exchange)
        except _Reset:
            exchange.status, exchange.answered_by = None, ""
            return self._drop(request)
        finally:
            exchange.done = True
        exchange.status = response.status
        if response.status >= 400 and exchange.error is None:
            exchange.error = _error_code(response)
        return self._dated(response)

    def _select(self, target: str, parsed: Mapping[str, Any], *kinds: str) -> list[Rule]:
        chosen = []
        for rule in self._rules:
            if rule.kind not in kinds or not rule.applies(target, parsed):
                continue
            if rule.skip:
                rule.skip -= 1
                continue
            rule.hits += 1
            chosen.append(rule)
        return chosen

    def _pick(self, target: str, parsed: Mapping[str, Any]) -> Rule | None:
        for rule in self._rules:
            if rule.kind not in ("error", "throttle", "reset", "failed_resources"):
                continue
            if not rule.applies(target, parsed):
                continue
            if rule.kind == "failed_resources":
                listed = parsed.get("ResourceARNList", [])
                if not any(rule.arns.get(a) for a in listed):
                    continue
            if rule.skip:
                rule.skip -= 1
                continue
            if not rule.draw():
                continue
            return rule
        return None

    def _fire(
        self, rule: Rule, parsed: Mapping[str, Any], target: str
    ) -> web.Response | tuple[list[str], dict[str, Any]] | Rule:
        rule.hits += 1
        if rule.kind == "failed_resources":
            failing = [a for a in parsed.get("ResourceARNList", []) if rule.arns.get(a)]
            for arn in failing:
                rule.arns[arn] -= 1
            return failing, dict(rule.entry)
        if rule.kind == "reset":
            return rule
        if rule.kind == "throttle":
            error_type = "ThrottledException" if _is_tagging(target) else "ThrottlingException"
            return self._error(error_type, "Rate exceeded")
        return self._error(rule.error_type, rule.message, rule.status)

    def _error(self, error_type: str, message: str, status: int = 400) -> web.Response:
        return web.json_response(
            {"__type": error_type, "message": message},
            status=status,
            content_type=_JSON_11,
            headers={"x-amzn-RequestId": str(uuid.uuid4()), "Date": self._date_header()},
        )

    def _date_header(self) -> str:
        return formatdate(self.aws_time(), usegmt=True)

    async def _wait(self, rule: Rule, parsed: Mapping[str, Any], operation: str) -> None:
        if rule.kind == "delay":
            await asyncio.sleep(rule.seconds)
            return
        names = _named_keys(operation, parsed) if rule.per_key else ()
        group = ",".join(sorted(names))
        gate = rule.groups.setdefault(group, _Gate())
        gate.arrived += 1
        if gate.arrived >= rule.parties:
            gate.event.set()
        try:
            await asyncio.wait_for(gate.event.wait(), rule.timeout)
        except TimeoutError:
            gate.event.set()

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        # Nothing reaches the client: its connection is gone.
        return web.Response(status=500)

    async def _respond(
        self,
        request: web.Request,
        target: str,
        parsed: dict[str, Any],
        body: bytes,
        fault: web.Response | tuple[list[str], dict[str, Any]] | Rule | None,
        exchange: Exchange,
    ) -> web.Response:
        if isinstance(fault, web.Response):
            exchange.answered_by = "proxy"
            return fault
        reset_after = False
        if isinstance(fault, Rule):  # a connection reset
            if not fault.after_forward:
                raise _Reset
            reset_after = True
        operation = _operation(target)
        behaviours = self.behaviours
        failing: dict[str, Mapping[str, Any]] = {}
        if isinstance(fault, tuple):
            arns, entry = fault
            failing.update(dict.fromkeys(arns, entry))
        if "signing_time" in behaviours and (refused := self._check_signing_time(request)):
            exchange.answered_by = "proxy"
            return refused

        if operation == "ListAliases" and behaviours & {"alias_dates", "alias_paging"}:
            response = await self._list_aliases(request, parsed, behaviours, exchange)
        else:
            async with self._key_locks_for(operation, parsed, behaviours):
                refused = await self._refuse(request, operation, parsed, behaviours)
                if refused is not None:
                    exchange.answered_by = "proxy"
                    return refused
                if "key_arns" in behaviours and operation in (
                    "ScheduleKeyDeletion",
                    "CancelKeyDeletion",
                ):
                    ref = parsed.get("KeyId")
                    if isinstance(ref, str) and ref != key_id_of(ref):
                        parsed = {**parsed, "KeyId": key_id_of(ref)}
                        body = json.dumps(parsed).encode()
                if operation == "TagResources" and "key_states" in behaviours:
                    failing.update(await self._unavailable_arns(request, parsed))
                if operation == "TagResources" and failing:
                    response = await self._tag_resources(request, parsed, failing, exchange)
                else:
                    response = await self._forward(request, body)
                    exchange.forwarded = True
                    exchange.answered_by = "emulator"
        if exchange.forwarded and response.status == 200:
            self._track_alias(operation, parsed)
            if operation == "GetResources" and self._stale_index:
                response = self._serve_stale_index(response)
        if exchange.forwarded:
            with self._lock:
                afters = self._select(target, parsed, "after")
            for rule in afters:
                assert rule.callback is not None
                rule.callback(parsed)
        if reset_after:
            raise _Reset
        return response

    # ------------------------------------------------------------------ AWS behaviours: clocks

    def _check_signing_time(self, request: web.Request) -> web.Response | None:
        """AWS's answer to a request signed more than 5 minutes off its clock, or None."""
        stamp = request.headers.get("X-Amz-Date")
        if not stamp:
            return None
        try:
            signed = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return self._error("IncompleteSignatureException", f"Invalid X-Amz-Date {stamp}")
        now = self.aws_time()
        fmt = "%Y%m%dT%H%M%SZ"
        aws = datetime.fromtimestamp(now, UTC).strftime(fmt)
        if signed < now - _SIGNING_WINDOW:
            earliest = datetime.fromtimestamp(now - _SIGNING_WINDOW, UTC).strftime(fmt)
            return self._error(
                "InvalidSignatureException",
                f"Signature expired: {stamp} is now earlier than {earliest} ({aws} - 5 min.)",
            )
        if signed > now + _SIGNING_WINDOW:
            latest = datetime.fromtimestamp(now + _SIGNING_WINDOW, UTC).strftime(fmt)
            return self._error(
                "InvalidSignatureException",
                f"Signature not yet current: {stamp} is still later than {latest} ({aws} + 5 min.)",
            )
        return None

    def _dated(self, response: web.Response) -> web.Response:
        """Apply :meth:`date_offset` or :meth:`drop_date` to an answer."""
        with self._lock:
            offset = self._date_offset
        if offset is None:
            # aiohttp writes a Date of its own when there is none: send it empty instead.
            response.headers["Date"] = ""
            return response
        if offset:
            raw = response.headers.get("Date")
            if raw:
                moment = parsedate_to_datetime(raw).timestamp() + offset
                response.headers["Date"] = formatdate(moment, usegmt=True)
        return response

    def _serve_stale_index(self, response: web.Response) -> web.Response:
        """GetResources as a lagging tagging index answers it: old tags for chosen keys."""
        with self._lock:
            stale = dict(self._stale_index)
        data = json.loads(response.body or b"{}")  # type: ignore[arg-type]
        for item in data.get("ResourceTagMappingList") or []:
            tags = stale.get(str(item.get("ResourceARN")))
            if tags is not None:
                item["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
        return web.json_response(data, content_type=_JSON_11, headers=_passed_headers(response))

    # ------------------------------------------------------------------ AWS behaviours: keys

    @contextlib.asynccontextmanager
    async def _key_locks_for(
        self, operation: str, parsed: Mapping[str, Any], behaviours: frozenset[str]
    ) -> AsyncIterator[None]:
        """Serialise calls that change one key, as AWS applies them one at a time."""
        if "key_states" not in behaviours or operation not in _KEY_STATE_OPERATIONS:
            yield
            return
        async with contextlib.AsyncExitStack() as stack:
            for name in sorted(set(_named_keys(operation, parsed))):
                await stack.enter_async_context(self._key_locks.setdefault(name, asyncio.Lock()))
            yield

    async def _lookup(self, request: web.Request, ref: str) -> _KeyInfo | None:
        """The key a KeyId names (ID, ARN, alias name or ARN), or None when there is none."""
        if self.emulator is not None:
            return self._lookup_local(ref)
        return await self._lookup_upstream(request, ref)

    def _lookup_local(self, ref: str) -> _KeyInfo | None:
        assert self.emulator is not None
        if ref.startswith("alias/") or ":alias/" in ref:
            name = ref if ref.startswith("alias/") else "alias/" + ref.split(":alias/", 1)[1]
            found = self.emulator.alias_target(name)
            if found is None:
                return None
            ref = found
        key = self.emulator.backend.keys.get(key_id_of(ref))
        if key is None:
            return None
        return _KeyInfo(str(key.id), str(key.arn), str(key.key_state))

    async def _lookup_upstream(self, request: web.Request, ref: str) -> _KeyInfo | None:
        assert self._session is not None
        headers = {
            "X-Amz-Target": "TrentService.DescribeKey",
            "Content-Type": _JSON_11,
            # moto reads the region from the credential scope of the signature
            "Authorization": request.headers.get("Authorization", ""),
        }
        async with self._session.post(
            self.upstream + "/", headers=headers, data=json.dumps({"KeyId": ref}).encode()
        ) as answer:
            if answer.status != 200:
                return None
            meta = json.loads(await answer.read()).get("KeyMetadata", {})
        return _KeyInfo(str(meta.get("KeyId")), str(meta.get("Arn")), str(meta.get("KeyState")))

    async def _refuse(
        self,
        request: web.Request,
        operation: str,
        parsed: Mapping[str, Any],
        behaviours: frozenset[str],
    ) -> web.Response | None:
        """AWS's answer where it refuses a call moto would carry out, or None."""
        if operation == "ScheduleKeyDeletion" and "validation" in behaviours:
            days = parsed.get("PendingWindowInDays")
            if days is not None and (not isinstance(days, int) or not 7 <= days <= 30):
                return self._error(
                    "ValidationException",
                    f"1 validation error detected: Value '{days}' at 'pendingWindowInDays' "
                    "failed to satisfy constraint: Member must have value between 7 and 30",
                )
        if "key_states" not in behaviours or operation not in _KEY_STATE_OPERATIONS:
            return None
        if operation == "TagResources":
            return None  # per ARN, in FailedResourcesMap
        ref = parsed.get("KeyId")
        if not isinstance(ref, str) or not ref:
            return None
        info = await self._lookup(request, ref)
        if info is None:
            return None  # moto answers NotFoundException itself
        if operation == "CancelKeyDeletion":
            if info.state != _PENDING:
                return self._error(
                    "KMSInvalidStateException", f"{info.arn} is not pending deletion."
                )
            return None
        if info.state == _PENDING:
            return self._error("KMSInvalidStateException", f"{info.arn} is pending deletion.")
        return None

    async def _unavailable_arns(
        self, request: web.Request, parsed: Mapping[str, Any]
    ) -> dict[str, Mapping[str, Any]]:
        """ARNs of a TagResources call that AWS would fail: keys pending deletion or gone."""
        failing: dict[str, Mapping[str, Any]] = {}
        for arn in parsed.get("ResourceARNList") or []:
            info = await self._lookup(request, str(arn))
            if info is None:
                message = f"NotFoundException: Key '{arn}' does not exist"
            elif info.state == _PENDING:
                message = f"KMSInvalidStateException: {info.arn} is pending deletion."
            else:
                continue
            failing[str(arn)] = {
                "StatusCode": 400,
                "ErrorCode": "InvalidParameterException",
                "ErrorMessage": message,
            }
        return failing

    async def _tag_resources(
        self,
        request: web.Request,
        parsed: Mapping[str, Any],
        failing: Mapping[str, Mapping[str, Any]],
        exchange: Exchange,
    ) -> web.Response:
        """Forward TagResources without the failing ARNs, and report those as AWS would."""
        kept = [a for a in parsed.get("ResourceARNList", []) if a not in failing]
        answer: dict[str, Any] = {"FailedResourcesMap": {}}
        headers: dict[str, str] = {"Date": self._date_header()}
        if kept:
            upstream = await self._forward(
                request, json.dumps({**parsed, "ResourceARNList": kept}).encode()
            )
            exchange.forwarded = True
            if upstream.status != 200:
                exchange.answered_by = "emulator"
                return upstream
            answer = json.loads(upstream.body or b"{}")  # type: ignore[arg-type]
            headers = _passed_headers(upstream)
        exchange.answered_by = "proxy"
        answer.setdefault("FailedResourcesMap", {})
        answer["FailedResourcesMap"].update({a: dict(e) for a, e in failing.items()})
        return web.json_response(answer, content_type=_JSON_11, headers=headers)

    # ------------------------------------------------------------------ AWS behaviours: aliases

    def _track_alias(self, operation: str, parsed: Mapping[str, Any]) -> None:
        name = parsed.get("AliasName")
        if not isinstance(name, str):
            return
        now = self.aws_time()
        with self._lock:
            if operation == "CreateAlias":
                self._alias_dates[name] = (now, now)
            elif operation == "UpdateAlias":
                known = self._alias_dates.get(name)
                self._alias_dates[name] = (known[0] if known else now, now)
            elif operation == "DeleteAlias":
                self._alias_dates.pop(name, None)

    async def _list_aliases(
        self,
        request: web.Request,
        parsed: Mapping[str, Any],
        behaviours: frozenset[str],
        exchange: Exchange,
    ) -> web.Response:
        paging = "alias_paging" in behaviours
        limit = parsed.get("Limit")
        if (
            paging
            and limit is not None
            and (not isinstance(limit, int) or not 1 <= limit <= _ALIAS_PAGE_MAX)
        ):
            exchange.answered_by = "proxy"
            return self._error(
                "ValidationException",
                f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy "
                "constraint: Member must have value between 1 and 100",
            )
        after: str | None = None
        marker = parsed.get("Marker")
        if paging and marker:
            try:
                after = base64.urlsafe_b64decode(str(marker).encode()).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                exchange.answered_by = "proxy"
                return self._error("InvalidMarkerException", "The marker is not valid.")
        # Every alias the emulator holds (it pages ListAliases too): follow its pages.
        forwarded = {k: v for k, v in parsed.items() if k not in ("Limit", "Marker")}
        aliases: list[dict[str, Any]] = []
        while True:
            upstream = await self._forward(
                request, json.dumps({**forwarded, "Limit": _ALIAS_PAGE_MAX}).encode()
            )
            exchange.forwarded = True
            exchange.answered_by = "emulator"
            if upstream.status != 200:
                return upstream
            data = json.loads(upstream.body or b"{}")  # type: ignore[arg-type]
            aliases.extend(data.get("Aliases") or [])
            if not data.get("Truncated") or not data.get("NextMarker"):
                break
            forwarded["Marker"] = data["NextMarker"]
        if "alias_dates" in behaviours:
            self._date_aliases(aliases)
        answer: dict[str, Any] = {**data, "Aliases": aliases, "Truncated": False}
        answer.pop("NextMarker", None)
        if paging:
            aliases.sort(key=lambda a: str(a.get("AliasName", "")))
            if after is not None:
                aliases = [a for a in aliases if str(a.get("AliasName", "")) > after]
            size = limit if isinstance(limit, int) else _ALIAS_PAGE_DEFAULT
            page = aliases[:size]
            answer["Aliases"] = page
            if len(aliases) > size:
                answer["Truncated"] = True
                last = str(page[-1].get("AliasName", ""))
                answer["NextMarker"] = base64.urlsafe_b64encode(last.encode()).decode()
        exchange.answered_by = "proxy"
        return web.json_response(answer, content_type=_JSON_11, headers=_passed_headers(upstream))

    def _date_aliases(self, aliases: list[dict[str, Any]]) -> None:
        now = self.aws_time()
        with self._lock:
            for alias in aliases:
                name = alias.get("AliasName")
                if not isinstance(name, str) or name.startswith("alias/aws/"):
                    continue
                created, updated = self._alias_dates.setdefault(name, (now, now))
                alias["CreationDate"] = created
                alias["LastUpdatedDate"] = updated

    # ------------------------------------------------------------------ forwarding

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}
        async with self._session.request(
            request.method,
            self.upstream + request.rel_url.raw_path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _SKIP_HEADERS}
            return web.Response(status=upstream.status, body=payload, headers=out)


def _passed_headers(response: web.Response) -> dict[str, str]:
    """The emulator's headers worth keeping on a rewritten answer (``Date``, request ID)."""
    keep = ("date", "x-amzn-requestid")
    return {k: v for k, v in response.headers.items() if k.lower() in keep}


def _error_code(response: web.Response) -> str | None:
    try:
        data = json.loads(response.body or b"{}")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(response.status)
    if isinstance(data, dict):
        code = data.get("__type") or data.get("code")
        if code:
            return str(code).rpartition("#")[2]
    return str(response.status)


def _same(operation: str, target: str) -> bool:
    if operation == ANY:
        return True
    if operation == MUTATING:
        return _operation(target) in MUTATING_OPERATIONS
    return operation in (target, _operation(target))
