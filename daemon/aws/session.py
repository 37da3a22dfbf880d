"""Building the daemon's AWS clients: the configuration chain, timeouts and retries, and the
memory botocore would keep for nothing."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aioboto3
from botocore.config import Config

from daemon.aws.client import AwsApi, AwsOptions
from daemon.aws.stats import CallStats


def client_config(options: AwsOptions) -> Config:
    """Return botocore's client configuration: timeouts and standard-mode retries."""
    return Config(
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        retries={"mode": "standard", "total_max_attempts": options.max_attempts},
        max_pool_connections=max(10, options.max_concurrency),
        user_agent_extra="spire-kms-reconciler",
    )


def release_endpoint_table(session: aioboto3.Session) -> None:
    """Let go of botocore's parsed ``endpoints.json`` once the clients exist.

    To build a client, botocore parses the whole file (every service in every region, about
    7 MB of Python objects) and keeps it twice: in the session's endpoint resolver and in its
    data loader's cache. The daemon builds its two clients once, and they resolve endpoints from
    their own service's rule set, so the table is only dead weight next to a 5,000-key run.
    The resolver goes back to being built on demand, should anything ask for it again. These
    are botocore internals: each step does nothing when they are not what is expected.
    """
    core = getattr(session, "_session", None)
    register = getattr(core, "_register_endpoint_resolver", None)
    if callable(register):
        register()  # lazy again: the built resolver is dropped
    get_component = getattr(core, "get_component", None)
    loader = get_component("data_loader") if callable(get_component) else None
    cache = getattr(loader, "_cache", None)
    if isinstance(cache, dict):
        for key in [k for k in cache if isinstance(k, tuple) and k[1:2] == ("endpoints",)]:
            del cache[key]


@asynccontextmanager
async def open_aws(options: AwsOptions, stats: CallStats | None = None) -> AsyncIterator[AwsApi]:
    """Build KMS and tagging clients from the standard AWS configuration chain."""
    # botocore reads AWS_DEFAULT_REGION only; the Go SDK SPIRE uses reads AWS_REGION first, and
    # an environment file shared with SPIRE may set only that one.
    region = options.region or os.environ.get("AWS_REGION") or None
    session = aioboto3.Session(region_name=region) if region else aioboto3.Session()
    config = client_config(options)
    extra: dict[str, Any] = {"config": config}
    if options.endpoint_url:
        extra["endpoint_url"] = options.endpoint_url
    async with AsyncExitStack() as stack:
        kms = await stack.enter_async_context(session.client("kms", **extra))
        tagging = await stack.enter_async_context(
            session.client("resourcegroupstaggingapi", **extra)
        )
        release_endpoint_table(session)
        yield AwsApi(
            kms,
            tagging,
            stats=stats,
            max_concurrency=options.max_concurrency,
            mutating_calls_per_second=options.mutating_calls_per_second,
        )
