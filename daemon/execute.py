"""Carry out a plan: AWS writes with batching and per-key failure reports; dry runs stop here."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from daemon.aws.client import AwsApi
from daemon.aws.errors import AccessDenied, AwsError, InvalidState, NotFound, Stopping
from daemon.model import (
    KEY_STATE_PENDING_DELETION,
    Action,
    ActionKind,
    ActionResult,
    Outcome,
    Plan,
)

log = structlog.get_logger("daemon.execute")


@dataclass(slots=True)
class TaggingMode:
    """Whether stamps go through tag:TagResources in batches; off once AWS denies it."""

    batch: bool = True


@dataclass(frozen=True, slots=True)
class ExecuteOptions:
    """What the executor needs besides the plan."""

    pending_window_days: int = 7
    dry_run: bool = False


def _failed(action: Action, exc: AwsError) -> ActionResult:
    if isinstance(exc, Stopping):
        return _result(action, Outcome.SKIPPED, "the daemon is stopping")
    return _result(action, Outcome.FAILURE, _describe(exc), denied=isinstance(exc, AccessDenied))


def _result(
    action: Action, outcome: Outcome, error: str | None = None, *, denied: bool = False
) -> ActionResult:
    fields = {
        "action": action.kind.value,
        "key_arn": action.arn,
        "spire_key_id": action.spire_key_id,
        "server_id": action.server_id,
        "reason": action.reason,
        "outcome": outcome.value,
    }
    if action.alias_name:
        fields["alias_name"] = action.alias_name
    if error is None:
        log.info("action", **fields)
    else:
        log.warning("action", error=error, **fields)
    return ActionResult(action, outcome, error, denied)


async def execute(
    api: AwsApi, plan: Plan, options: ExecuteOptions, mode: TaggingMode | None = None
) -> tuple[ActionResult, ...]:
    """Execute ``plan``'s actions and return one result per action."""
    if options.dry_run:
        return tuple(_result(a, Outcome.SKIPPED, None) for a in plan.actions)
    mode = mode or TaggingMode()
    by_kind: dict[ActionKind, list[Action]] = defaultdict(list)
    for action in plan.actions:
        by_kind[action.kind].append(action)

    results: list[ActionResult] = []
    results += await asyncio.gather(*(_migrate(api, a) for a in by_kind[ActionKind.MIGRATE]))
    results += await _stamp(api, by_kind[ActionKind.STAMP], mode)
    results += await asyncio.gather(
        *(_refresh_alias(api, a) for a in by_kind[ActionKind.REFRESH_ALIAS])
    )
    reclaim: dict[str, list[Action]] = defaultdict(list)
    for kind in (ActionKind.MARK_INACTIVE, ActionKind.SCHEDULE_DELETION):
        for action in by_kind[kind]:
            reclaim[action.arn].append(action)
    for key_results in await asyncio.gather(
        *(_reclaim(api, steps, options.pending_window_days) for steps in reclaim.values())
    ):
        results += key_results
    return tuple(results)


async def _migrate(api: AwsApi, action: Action) -> ActionResult:
    try:
        await api.tag_resource(action.key_id, action.tags)
    except AwsError as exc:
        return _failed(action, exc)
    return _result(action, Outcome.SUCCESS)


async def _stamp(api: AwsApi, actions: Sequence[Action], mode: TaggingMode) -> list[ActionResult]:
    if not actions:
        return []
    groups: dict[tuple[tuple[str, str], ...], list[Action]] = defaultdict(list)
    for action in actions:
        groups[tuple(sorted(action.tags.items()))].append(action)
    results: list[ActionResult] = []
    for tags, group in groups.items():
        if mode.batch:
            try:
                failed = await api.tag_resources([a.arn for a in group], dict(tags))
            except AccessDenied as exc:
                log.warning(
                    "tag_resources_denied",
                    fallback="kms:TagResource",
                    error=exc.explain(),
                )
                mode.batch = False
            except AwsError as exc:
                results += [_failed(a, exc) for a in group]
                continue
            else:
                for action in group:
                    err = failed.get(action.arn)
                    results.append(
                        _failed(action, err)
                        if err is not None
                        else _result(action, Outcome.SUCCESS)
                    )
                continue
        results += await asyncio.gather(*(_migrate(api, a) for a in group))
    return results


async def _refresh_alias(api: AwsApi, action: Action) -> ActionResult:
    assert action.alias_name is not None
    try:
        await api.update_alias(action.alias_name, action.key_id)
    except AwsError as exc:
        return _failed(action, exc)
    return _result(action, Outcome.SUCCESS)


async def _pending(api: AwsApi, key_id: str) -> bool:
    """Whether the key is pending deletion (after KMS refused a call for its state)."""
    try:
        meta = await api.describe_key(key_id)
    except NotFound:
        return True  # already gone
    except AwsError:
        return False
    return meta.state == KEY_STATE_PENDING_DELETION


async def _reclaim(
    api: AwsApi, steps: Sequence[Action], pending_window_days: int
) -> list[ActionResult]:
    """Mark a key inactive, then schedule its deletion; stop at the first real failure."""
    results: list[ActionResult] = []
    for index, action in enumerate(steps):
        try:
            if action.kind is ActionKind.MARK_INACTIVE:
                await api.tag_resource(action.key_id, action.tags)
            else:
                await api.schedule_key_deletion(action.key_id, pending_window_days)
        except (InvalidState, NotFound) as exc:
            if await _pending(api, action.key_id):
                # Someone (another daemon, a SPIRE server) scheduled it first: done.
                results.append(_result(action, Outcome.SUCCESS, None))
                results += [_result(rest, Outcome.SUCCESS, None) for rest in steps[index + 1 :]]
                return results
            results.append(_failed(action, exc))
        except AwsError as exc:
            results.append(_failed(action, exc))
        else:
            results.append(_result(action, Outcome.SUCCESS))
            continue
        results += [
            _result(rest, Outcome.SKIPPED, "an earlier step for this key failed")
            for rest in steps[index + 1 :]
        ]
        return results
    return results


def _describe(exc: AwsError) -> str:
    if isinstance(exc, AccessDenied):
        return exc.explain()
    return f"{exc.code}: {exc.message}"
