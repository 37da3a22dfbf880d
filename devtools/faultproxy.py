"""A small fault-injecting reverse proxy in front of the KMS emulator, for tests.

moto answers every call it understands and never fails the way AWS does (no JSON
``AccessDeniedException``, no throttling, no 5xx, no partial ``FailedResourcesMap``). This proxy
sits between the daemon's aioboto3 clients and the emulator, forwards every request unchanged, and
lets a test make chosen operations fail::

    with FaultProxy(emulator.endpoint_url) as proxy:
        proxy.deny("GetResources")                       # JSON AccessDeniedException, always
        proxy.throttle("TagResources", times=2)          # the first two calls, then pass through
        proxy.fail_resources([arn])                      # arn lands in FailedResourcesMap once
        proxy.server_error("TagResources", skip=1)       # the first call passes, the rest fail
        proxy.before("ScheduleKeyDeletion", callback)    # run callback(body) first (a racing actor)
        ...  # point clients at proxy.endpoint_url
        assert proxy.count("ScheduleKeyDeletion") == 0

Operations are chosen by the request's ``X-Amz-Target`` header, either in full
(``TrentService.TagResource``, ``ResourceGroupsTaggingAPI_20170126.GetResources``) or by the
operation name alone (``TagResource``; note ``TagResource`` and ``TagResources`` are different
operations). Every request is counted per operation, faulted or not, and its JSON body kept, so a
test can assert exactly which calls a run made.

The proxy runs aiohttp on its own event loop in a daemon thread, so it serves synchronous tests,
``asyncio.run`` inside the CLI and pytest-asyncio tests alike. Responses from the emulator are
passed through byte for byte with their headers (including ``Date``, which the daemon's clock
guard reads, so :attr:`Emulator.clock_skew` still works through the proxy). Answers the proxy makes
up itself carry aiohttp's own, unskewed ``Date``.

Not modelled yet (moto gaps a fuller proxy should close): alias dates, key-state rules,
ListAliases/ListKeys paging, AWS's GetResources page sizes (moto also cuts pages at 100 tags).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

__all__ = ["DEFAULT_PRINCIPAL", "FaultProxy", "Rule"]

#: The principal named in the AccessDenied messages the proxy makes up.
DEFAULT_PRINCIPAL = "arn:aws:iam::123456789012:user/ci"

_JSON_11 = "application/x-amz-json-1.1"
# Hop-by-hop headers and those aiohttp recomputes; never copied across the proxy.
_SKIP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
)
_IAM_PREFIX = {"TrentService": "kms", "ResourceGroupsTaggingAPI_20170126": "tag"}
_TAGGING_PREFIX = "ResourceGroupsTaggingAPI_20170126"


@dataclass(slots=True)
class Rule:
    """One fault: answer ``operation`` with ``error_type``, rewrite its response, or run a hook.

    The first ``skip`` matching requests pass untouched. After that, ``times`` None means always;
    otherwise the rule applies to ``times`` requests and then lets them through. For
    ``kind == "failed_resources"``, ``times`` counts per ARN: each listed ARN fails that many times.
    """

    operation: str
    kind: str  # "error", "failed_resources" or "hook"
    status: int = 400
    error_type: str = ""
    message: str = ""
    times: int | None = None
    arns: dict[str, int] = field(default_factory=dict)  # ARN -> failures left
    entry: Mapping[str, Any] = field(default_factory=dict)  # FailedResourcesMap value
    callback: Callable[[dict[str, Any]], None] | None = None  # for kind == "hook"
    skip: int = 0  # matching requests still to let through before the rule applies
    hits: int = 0  # how often the rule has fired

    def matches(self, target: str) -> bool:
        """Whether the rule is for the operation of this ``X-Amz-Target``."""
        return self.operation in (target, target.rpartition(".")[2])

    def exhausted(self) -> bool:
        """Whether the rule has fired as often as it should."""
        if self.kind == "failed_resources":
            return not any(self.arns.values())
        return self.times is not None and self.hits >= self.times


class FaultProxy:
    """A reverse proxy to ``upstream`` that injects faults by operation and counts requests.

    Use as a context manager or call :meth:`start` / :meth:`stop`; :meth:`reset` drops the rules
    and counters (for reuse across tests).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._counts: Counter[str] = Counter()
        self._bodies: list[tuple[str, dict[str, Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._endpoint_url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``; only valid while started."""
        if self._endpoint_url is None:
            raise RuntimeError("FaultProxy is not started")
        return self._endpoint_url

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

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

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

    # ------------------------------------------------------------------ rules

    def reset(self) -> None:
        """Drop every rule, counter and recorded request."""
        with self._lock:
            self._rules.clear()
            self._counts.clear()
            self._bodies.clear()

    def clear_rules(self) -> None:
        """Drop every rule, keeping the counters."""
        with self._lock:
            self._rules.clear()

    def add(self, rule: Rule) -> Rule:
        """Add a rule; the first matching, unexhausted rule wins. Returns it (``.hits``)."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(
        self,
        operation: str,
        error_type: str,
        message: str = "injected by FaultProxy",
        *,
        status: int = 400,
        times: int | None = None,
        skip: int = 0,
    ) -> Rule:
        """Answer ``operation`` with a JSON error ``{"__type": error_type, "message": ...}``."""
        return self.add(Rule(operation, "error", status, error_type, message, times, skip=skip))

    def deny(
        self,
        operation: str,
        *,
        principal: str = DEFAULT_PRINCIPAL,
        action: str | None = None,
        times: int | None = None,
        skip: int = 0,
    ) -> Rule:
        """Answer with AccessDeniedException worded as IAM words it for an identity policy."""
        action = action or self._iam_action(operation)
        message = (
            f"User: {principal} is not authorized to perform: {action} because no "
            f"identity-based policy allows the {action} action"
        )
        return self.fail(operation, "AccessDeniedException", message, times=times, skip=skip)

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
            tagging = operation.startswith(_TAGGING_PREFIX) or operation in (
                "GetResources",
                "TagResources",
                "UntagResources",
                "GetTagKeys",
                "GetTagValues",
            )
            error_type = "ThrottledException" if tagging else "ThrottlingException"
        return self.fail(operation, error_type, "Rate exceeded", times=times, skip=skip)

    def server_error(self, operation: str, *, times: int | None = None, skip: int = 0) -> Rule:
        """Answer with HTTP 500 ``InternalFailure`` (botocore retries it)."""
        return self.fail(
            operation,
            "InternalFailure",
            "We encountered an internal error.",
            status=500,
            times=times,
            skip=skip,
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

    def before(
        self,
        operation: str,
        callback: Callable[[dict[str, Any]], None],
        *,
        times: int | None = None,
    ) -> Rule:
        """Call ``callback(request_body)`` before ``operation`` is answered (by a fault rule or
        the emulator), e.g. to change the emulator's state as a concurrent actor would. It runs
        on the proxy's thread; hooks do not stop other rules from applying."""
        return self.add(Rule(operation, "hook", times=times, callback=callback))

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
        tagging = ("GetResources", "TagResources", "UntagResources", "GetTagKeys", "GetTagValues")
        return f"{'tag' if name in tagging else 'kms'}:{name}"

    # ------------------------------------------------------------------ counters

    def count(self, operation: str | None = None) -> int:
        """Requests received for ``operation`` (full target or name), or in total when None."""
        with self._lock:
            if operation is None:
                return sum(self._counts.values())
            return sum(n for target, n in self._counts.items() if _same(operation, target))

    def counts(self) -> dict[str, int]:
        """Requests received per operation name (``TagResource``, ``GetResources``...)."""
        with self._lock:
            totals: Counter[str] = Counter()
            for target, n in self._counts.items():
                totals[target.rpartition(".")[2]] += n
            return dict(totals)

    def requests(self, operation: str) -> list[dict[str, Any]]:
        """The JSON bodies of the requests received for ``operation``, in order."""
        with self._lock:
            return [body for target, body in self._bodies if _same(operation, target)]

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
        with self._lock:
            if target:
                self._counts[target] += 1
                self._bodies.append((target, parsed))
            hooks = self._hooks(target)
            rule = self._pick(target, parsed)
            fault = self._fire(rule, parsed) if rule is not None else None
        for hook in hooks:
            hook(parsed)
        if isinstance(fault, web.Response):
            return fault
        if fault is not None:  # failed_resources: forward without the failing ARNs
            failing, entry = fault
            kept = [a for a in parsed.get("ResourceARNList", []) if a not in failing]
            answer: dict[str, Any] = {"FailedResourcesMap": {}}
            if kept:
                upstream = await self._forward(
                    request, json.dumps({**parsed, "ResourceARNList": kept}).encode()
                )
                if upstream.status != 200:
                    return upstream
                answer = json.loads(upstream.body or b"{}")  # type: ignore[arg-type]
            answer.setdefault("FailedResourcesMap", {})
            answer["FailedResourcesMap"].update(dict.fromkeys(failing, entry))
            return web.json_response(answer, content_type=_JSON_11)
        return await self._forward(request, body)

    def _hooks(self, target: str) -> list[Callable[[dict[str, Any]], None]]:
        hooks = []
        for rule in self._rules:
            if rule.kind != "hook" or not target or not rule.matches(target) or rule.exhausted():
                continue
            if rule.skip:
                rule.skip -= 1
                continue
            rule.hits += 1
            assert rule.callback is not None
            hooks.append(rule.callback)
        return hooks

    def _pick(self, target: str, parsed: Mapping[str, Any]) -> Rule | None:
        for rule in self._rules:
            if rule.kind == "hook" or not target or not rule.matches(target) or rule.exhausted():
                continue
            if rule.kind == "failed_resources":
                listed = parsed.get("ResourceARNList", [])
                if not any(rule.arns.get(a) for a in listed):
                    continue
            if rule.skip:
                rule.skip -= 1
                continue
            return rule
        return None

    def _fire(
        self, rule: Rule, parsed: Mapping[str, Any]
    ) -> web.Response | tuple[list[str], dict[str, Any]]:
        rule.hits += 1
        if rule.kind == "failed_resources":
            failing = [a for a in parsed.get("ResourceARNList", []) if rule.arns.get(a)]
            for arn in failing:
                rule.arns[arn] -= 1
            return failing, dict(rule.entry)
        return web.json_response(
            {"__type": rule.error_type, "message": rule.message},
            status=rule.status,
            content_type=_JSON_11,
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

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


def _same(operation: str, target: str) -> bool:
    return operation in (target, target.rpartition(".")[2])
