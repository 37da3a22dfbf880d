"""Carry out a plan: AWS writes with batching and per-key failure reports; dry runs stop here."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from daemon import progress
from daemon.aio import map_pooled
from daemon.aws.client import TAG_RESOURCES_BATCH, AwsApi
from daemon.aws.errors import AccessDenied, AwsError, Held, InvalidState, NotFound, Stopping
from daemon.model import (
    KEY_STATE_PENDING_DELETION,
    Action,
    ActionKind,
    ActionResult,
    Outcome,
    Plan,
)
from daemon.observe import confirm_tags
from daemon.plan import confirm
from daemon.progress import Listener

log = structlog.get_logger("daemon.execute")

_YIELD_EVERY = 50


@dataclass(slots=True)
class TaggingMode:
    """Whether stamps go through tag:TagResources in batches; off once AWS denies it."""

    batch: bool = True


@dataclass(frozen=True, slots=True)
class ExecuteOptions:
    """What the executor needs besides the plan."""

    pending_window_days: int = 7
    dry_run: bool = False
    protect_tag: str = "spire-protect"  # for the re-read of a reclaim candidate's tags
    job: str = ""  # named in progress events
    progress: Listener | None = None  # told of every finished action


def _failed(action: Action, exc: AwsError) -> ActionResult:
    if isinstance(exc, Stopping):
        return _result(action, Outcome.SKIPPED, "the daemon is stopping")
    if isinstance(exc, Held):
        return _result(action, Outcome.SKIPPED, exc.message)
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
    progress.tick()
    return ActionResult(action, outcome, error, denied)


async def execute(
    api: AwsApi, plan: Plan, options: ExecuteOptions, mode: TaggingMode | None = None
) -> tuple[ActionResult, ...]:
    """Execute ``plan``'s actions and return one result per action."""
    job = options.job or plan.job
    with progress.tracking(job, len(plan.actions), options.progress):
        return await _execute(api, plan, options, mode)


async def _execute(
    api: AwsApi, plan: Plan, options: ExecuteOptions, mode: TaggingMode | None
) -> tuple[ActionResult, ...]:
    if options.dry_run:
        return tuple(_result(a, Outcome.PLANNED, None) for a in plan.actions)
    run = _Writes(api, options, mode or TaggingMode())
    by_kind: dict[ActionKind, list[Action]] = defaultdict(list)
    for action in plan.actions:
        by_kind[action.kind].append(action)
    results: list[ActionResult] = []
    for step in STEPS:
        results += await step.run(run, *(by_kind[kind] for kind in step.kinds))
    return tuple(results)


@dataclass(frozen=True, slots=True)
class _Writes:
    """What every step of a run's writes shares."""

    api: AwsApi
    options: ExecuteOptions
    mode: TaggingMode


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the executor: the action kinds it takes (each as one list, in this order) and
    the coroutine that carries them out."""

    kinds: tuple[ActionKind, ...]
    run: Callable[..., Awaitable[list[ActionResult]]]


async def _aliases(run: _Writes, aliases: Sequence[Action]) -> list[ActionResult]:
    return await map_pooled(aliases, lambda a: _refresh_alias(run.api, a))


async def _migrations(run: _Writes, migrations: Sequence[Action]) -> list[ActionResult]:
    return await map_pooled(migrations, lambda a: _migrate(run.api, a))


async def _stamps(run: _Writes, stamps: Sequence[Action]) -> list[ActionResult]:
    return await _report(stamps, await _tag_batched(run.api, stamps, run.mode))


async def _reclaims(
    run: _Writes, marks: Sequence[Action], schedules: Sequence[Action]
) -> list[ActionResult]:
    return await _reclaim(run.api, marks, schedules, run.options, run.mode)


#: The executor's steps, in the order they run; every ActionKind is in exactly one. Aliases come
#: first, right after they were read: UpdateAlias has no condition, so a replica that rotates an
#: alias between the read and the write would be reverted, and that gap is kept as short as the
#: run allows. Reclaims come last, each key marked before its deletion is scheduled.
STEPS: tuple[Step, ...] = (
    Step((ActionKind.REFRESH_ALIAS,), _aliases),
    Step((ActionKind.MIGRATE,), _migrations),
    Step((ActionKind.STAMP,), _stamps),
    Step((ActionKind.MARK_INACTIVE, ActionKind.SCHEDULE_DELETION), _reclaims),
)


async def _report(
    actions: Sequence[Action], errors: Mapping[str, AwsError | None]
) -> list[ActionResult]:
    """One result per action from its error (None: done), yielding to the loop as it goes."""
    results: list[ActionResult] = []
    for index, action in enumerate(actions, 1):
        err = errors.get(action.arn)
        results.append(
            _failed(action, err) if err is not None else _result(action, Outcome.SUCCESS)
        )
        if index % _YIELD_EVERY == 0:
            await asyncio.sleep(0)  # keep /metrics and /healthz answering during large runs
    return results


async def _migrate(api: AwsApi, action: Action) -> ActionResult:
    try:
        await api.tag_resource(action.key_id, action.tags)
    except AwsError as exc:
        return _failed(action, exc)
    return _result(action, Outcome.SUCCESS)


async def _tag_one(api: AwsApi, action: Action) -> AwsError | None:
    try:
        await api.tag_resource(action.key_id, action.tags)
    except AwsError as exc:
        return exc
    return None


async def _tag_batched(
    api: AwsApi, actions: Sequence[Action], mode: TaggingMode
) -> dict[str, AwsError | None]:
    """Apply each action's tags through tag:TagResources, 20 keys a call, or kms:TagResource.

    Returns each key ARN's error, or None where the tags were applied.
    """
    groups: dict[tuple[tuple[str, str], ...], list[Action]] = defaultdict(list)
    for action in actions:
        groups[tuple(sorted(action.tags.items()))].append(action)
    errors: dict[str, AwsError | None] = {}
    for tags, group in groups.items():
        if mode.batch:
            try:
                failed = await api.tag_resources([a.arn for a in group], dict(tags))
            except AccessDenied as exc:
                log.warning("tag_resources_denied", fallback="kms:TagResource", error=exc.explain())
                mode.batch = False
            except AwsError as exc:
                errors.update(dict.fromkeys((a.arn for a in group), exc))
                continue
            else:
                errors.update({a.arn: failed.get(a.arn) for a in group})
                continue
        outcomes = await map_pooled(group, lambda a: _tag_one(api, a))
        errors.update(zip((a.arn for a in group), outcomes, strict=True))
    return errors


async def _refresh_alias(api: AwsApi, action: Action) -> ActionResult:
    """UpdateAlias to the target the run observed, if the alias still resolves to it.

    A SPIRE server that rotated the key after the run's observation would otherwise have its
    alias put back on the old key, which it then schedules for deletion (and fails to start
    on): :meth:`AwsApi.refresh_alias` reads the alias again right before the write and leaves
    it alone when it moved. What remains of the gap is one round trip, as in SPIRE's own alias
    refresh.
    """
    assert action.alias_name is not None
    try:
        moved = await api.refresh_alias(action.alias_name, action.arn, action.key_id)
    except AwsError as exc:
        return _failed(action, exc)
    if moved == "":
        return _result(action, Outcome.SKIPPED, "the alias no longer exists: not refreshed")
    if moved is not None:
        return _result(
            action,
            Outcome.SKIPPED,
            f"the alias now points to {moved} (a rotation since the run read it): not refreshed",
        )
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


@dataclass(frozen=True, slots=True)
class _Reclaim:
    """One key to reclaim: its mark (None for a completion) and its deletion."""

    mark: Action | None
    schedule: Action

    @property
    def first(self) -> Action:
        """The action whose tags the decision rests on."""
        return self.mark or self.schedule


async def _reclaim(
    api: AwsApi,
    marks: Sequence[Action],
    schedules: Sequence[Action],
    options: ExecuteOptions,
    mode: TaggingMode,
) -> list[ActionResult]:
    """Reclaim keys 20 at a time: read each key's tags again from KMS, mark those whose tags are
    still the ones judged (batched), then schedule the deletion of those marked and of the
    completions. Interrupted reclaims come first, as the plan orders them."""
    schedule_of = {a.arn: a for a in schedules}
    marked = {a.arn for a in marks}
    units = [_Reclaim(None, a) for a in schedules if a.arn not in marked]
    units += [_Reclaim(m, schedule_of[m.arn]) for m in marks if m.arn in schedule_of]
    results: list[ActionResult] = []
    for start in range(0, len(units), TAG_RESOURCES_BATCH):
        batch = units[start : start + TAG_RESOURCES_BATCH]
        results += await _reclaim_batch(api, batch, options, mode)
    return results


async def _reclaim_batch(
    api: AwsApi, batch: Sequence[_Reclaim], options: ExecuteOptions, mode: TaggingMode
) -> list[ActionResult]:
    results: list[ActionResult] = []
    fresh = await confirm_tags(api, [u.first.key_id for u in batch])
    going: list[_Reclaim] = []
    for unit in batch:
        tags = fresh.get(unit.first.key_id, {})
        if isinstance(tags, AwsError):
            # Not read, not confirmed: kept, and the run fails so that it is tried again.
            first = _failed(unit.first, tags)
            results.append(replace(first, error=f"tags not read again from KMS: {first.error}"))
            if unit.mark is not None:
                results.append(_result(unit.schedule, Outcome.SKIPPED, "the key was not marked"))
            continue
        why = confirm(unit.first, tags, options.protect_tag)
        if why is None:
            going.append(unit)
            continue
        for action in (unit.mark, unit.schedule):
            if action is not None:
                results.append(_result(action, Outcome.SKIPPED, why))
    marks = [u.mark for u in going if u.mark is not None]
    errors = await _tag_batched(api, marks, mode)
    failed = [a for a in marks if errors.get(a.arn) is not None]
    pending = await map_pooled(
        failed,
        lambda a: _false() if isinstance(errors[a.arn], Held) else _pending(api, a.key_id),
    )
    already = {a.arn for a, is_pending in zip(failed, pending, strict=True) if is_pending}
    to_schedule: list[Action] = []
    for unit in going:
        mark = unit.mark
        if mark is None:
            to_schedule.append(unit.schedule)
            continue
        err = errors.get(mark.arn)
        if err is None:
            results.append(_result(mark, Outcome.SUCCESS))
            to_schedule.append(unit.schedule)
        elif mark.arn in already:
            results.append(_result(mark, Outcome.SUCCESS))  # scheduled by someone else: done
            results.append(_result(unit.schedule, Outcome.SUCCESS))
        else:
            results.append(_failed(mark, err))
            results.append(
                _result(unit.schedule, Outcome.SKIPPED, "the key could not be marked inactive")
            )
    days = options.pending_window_days
    results += await map_pooled(to_schedule, lambda a: _schedule(api, a, days))
    return results


async def _false() -> bool:
    return False


async def _schedule(api: AwsApi, action: Action, pending_window_days: int) -> ActionResult:
    try:
        await api.schedule_key_deletion(action.key_id, pending_window_days)
    except (InvalidState, NotFound) as exc:
        if await _pending(api, action.key_id):
            return _result(action, Outcome.SUCCESS)  # someone scheduled it first: done
        return _failed(action, exc)
    except AwsError as exc:
        return _failed(action, exc)
    return _result(action, Outcome.SUCCESS)


def _describe(exc: AwsError) -> str:
    if isinstance(exc, AccessDenied):
        return exc.explain()
    return f"{exc.code}: {exc.message}"
