"""AWS reads that build the snapshots the planner decides on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Generic, TypeVar

from daemon import spire
from daemon.aio import map_pooled
from daemon.aws.client import AwsApi
from daemon.aws.clock import RunClock, current_run_clock
from daemon.aws.errors import AccessDenied, AwsError, NotFound
from daemon.liveness import Probe
from daemon.model import (
    AliasMeta,
    AliasTarget,
    KeyMeta,
    ObservedKey,
    ReclaimSnapshot,
    RefreshSnapshot,
)
from daemon.plan import (
    ReclaimPolicy,
    fraction_reads,
    judge_all,
    needs_aliases,
    needs_state,
    relevant_tags,
)

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Observed(Generic[S]):
    """A snapshot and the per-key read errors met while building it."""

    snapshot: S
    errors: tuple[str, ...] = ()


async def _each(
    items: Iterable[T], call: Callable[[T], Awaitable[R]]
) -> list[tuple[T, R | None, AwsError | None]]:
    """Run ``call`` on every item, a few at a time; a missing permission aborts, others don't."""

    async def one(item: T) -> tuple[T, R | None, AwsError | None]:
        try:
            return item, await call(item), None
        except AccessDenied:
            raise
        except AwsError as exc:
            return item, None, exc

    return await map_pooled(list(items), one)


async def scan_own_aliases(api: AwsApi, trust_domain: str, server_id: str) -> tuple[AliasMeta, ...]:
    """List the account's aliases (every page) and keep this server's SPIRE aliases."""
    prefix = spire.alias_prefix(trust_domain, server_id)
    own = [a async for a in api.iter_aliases() if a.name.startswith(prefix)]
    return tuple(a for a in own if spire.parse_alias(a.name, trust_domain, server_id))


async def _describe_alias(api: AwsApi, name: str) -> KeyMeta | None:
    try:
        return await api.describe_key(name)
    except NotFound:
        return None


async def observe_refresh(
    api: AwsApi,
    trust_domain: str,
    server_id: str,
    legacy_aliases: Sequence[AliasMeta] = (),
    probe: Probe | None = None,
) -> Observed[RefreshSnapshot]:
    """Observe this server's tagged keys, the key each of its aliases resolves to, and states.

    One GetResources scan, one DescribeKey per SPIRE key ID (on the alias name: it returns the
    alias target, or NotFound), and one DescribeKey per tagged key that is not an alias target.
    ``probe`` asks the local SPIRE server whether it is alive once the reads are done, right
    before any write could follow; without it the snapshot says "not probed".
    """
    resources = await api.get_resources(
        {
            spire.TAG_TRUST_DOMAIN: [trust_domain],
            spire.TAG_SERVER_ID: [server_id],
            spire.TAG_ACTIVE: [spire.ACTIVE_TRUE],
        }
    )
    names: dict[str, str] = {}
    for res in resources:
        kid = res.tags.get(spire.TAG_KEY_ID)
        if kid:
            names[kid] = spire.alias_name(trust_domain, server_id, kid)
    for alias in legacy_aliases:
        kid = spire.parse_alias(alias.name, trust_domain, server_id)
        if kid:
            names[kid] = alias.name

    errors: list[str] = []
    targets: list[AliasTarget] = []
    for kid, meta, err in await _each(sorted(names), lambda kid: _describe_alias(api, names[kid])):
        if err is not None:
            errors.append(str(err))
            continue
        targets.append(AliasTarget(names[kid], kid, meta))
    tagged_arns = {r.arn for r in resources}
    outside = sorted(
        {t.target.arn for t in targets if t.target is not None and t.target.arn not in tagged_arns}
    )
    if outside:
        # Alias targets outside this server's tagged keys: read their tags before migrating.
        try:
            found = await api.get_resources_by_arn(outside)
            tags_of: dict[str, dict[str, str] | None] = {a: found.get(a, {}) for a in outside}
        except AccessDenied:
            raise
        except AwsError as exc:
            errors.append(str(exc))
            tags_of = dict.fromkeys(outside)
        targets = [
            replace(t, target_tags=tags_of[t.target.arn])
            if t.target is not None and t.target.arn in tags_of
            else t
            for t in targets
        ]
    resolved = {t.target.arn: t.target for t in targets if t.target is not None}
    unresolved = [r for r in resources if r.arn not in resolved]
    described = {
        res.arn: (meta, err)
        for res, meta, err in await _each(unresolved, lambda r: api.describe_key(r.arn))
    }
    keys: list[ObservedKey] = []
    for res in resources:
        if res.arn in resolved:
            keys.append(ObservedKey(res.arn, dict(res.tags), resolved[res.arn]))
            continue
        meta, err = described[res.arn]
        if isinstance(err, NotFound):
            continue  # deleted; GetResources can list a key for a while after it is gone
        if err is not None:
            errors.append(str(err))
        keys.append(ObservedKey(res.arn, dict(res.tags), meta))
    liveness = await probe() if probe is not None else None
    snapshot = RefreshSnapshot(trust_domain, server_id, tuple(keys), tuple(targets), liveness)
    return Observed(snapshot, tuple(errors))


#: Rounds of DescribeKey the blast-radius guard may ask for (one key per unsettled server each).
FRACTION_READ_ROUNDS = 20


async def observe_reclaim(
    api: AwsApi,
    trust_domain: str,
    server_id: str,
    policy: ReclaimPolicy,
    *,
    describe_all: bool = False,
) -> Observed[ReclaimSnapshot]:
    """Observe every key tagged with this trust domain, and the state of what the planner needs.

    The run's first response sets AWS's clock (see :mod:`daemon.aws.clock`), on which staleness
    is judged. Keys whose tags say stale, and every key marked ``spire-active=false`` (the budget
    counts recent deletions), are described; Enabled candidates old enough to reclaim have their
    aliases listed (ListAliases by key ID). When something would be reclaimed, the blast-radius
    guard may ask for more keys to be described (:func:`~daemon.plan.fraction_reads`).
    ``describe_all`` describes every key, for the ``keys`` listing.
    """
    clock = current_run_clock()
    resources = await api.get_resources({spire.TAG_TRUST_DOMAIN: [trust_domain]})
    keys = [ObservedKey(r.arn, relevant_tags(r.tags, policy.protect_tag)) for r in resources]
    del resources  # a large trust domain: keep one copy of what matters, not two
    now = _now(clock)
    candidates = [k for k in keys if describe_all or needs_state(k, trust_domain, now, policy)]

    # For this server's own stale-looking keys, which key serves is decided as refresh does:
    # describe every sibling and the alias, so that a serving key is never taken for a stale one.
    own_kids = {
        k.tags.get(spire.TAG_KEY_ID)
        for k in candidates
        if k.tags.get(spire.TAG_SERVER_ID) == server_id
    } - {None, ""}
    chosen = {k.arn for k in candidates}
    for key in keys:
        if (
            key.arn not in chosen
            and key.tags.get(spire.TAG_SERVER_ID) == server_id
            and key.tags.get(spire.TAG_KEY_ID) in own_kids
        ):
            candidates.append(key)
            chosen.add(key.arn)

    errors: list[str] = []
    own_aliases: list[AliasTarget] = []
    alias_names = {kid: spire.alias_name(trust_domain, server_id, kid) for kid in own_kids if kid}
    for kid, meta, err in await _each(
        sorted(alias_names), lambda kid: _describe_alias(api, alias_names[kid])
    ):
        if err is not None:
            errors.append(str(err))
            continue
        own_aliases.append(AliasTarget(alias_names[kid], kid, meta))

    metas: dict[str, KeyMeta] = {}
    gone: set[str] = set()
    await _describe(api, candidates, metas, gone, errors)
    to_list = [m for m in metas.values() if needs_aliases(m, now, policy)]
    aliases: dict[str, tuple[AliasMeta, ...]] = {}
    for meta, found, err in await _each(to_list, lambda m: api.list_aliases(m.key_id)):
        if err is not None:
            errors.append(str(err))
        elif found is not None:
            aliases[meta.arn] = tuple(found)

    def snapshot() -> ReclaimSnapshot:
        observed = tuple(
            replace(k, meta=metas.get(k.arn), aliases=aliases.get(k.arn))
            for k in keys
            if k.arn not in gone
        )
        return ReclaimSnapshot(trust_domain, server_id, observed, tuple(own_aliases))

    tried: set[str] = set()
    for _ in range(FRACTION_READ_ROUNDS):
        draft = replace(snapshot(), aws_time=_now(clock))
        judged = judge_all(draft, _now(clock), policy)
        wanted = fraction_reads(
            draft, judged.verdicts, judged.proposal, tried, policy.max_reclaim_fraction
        )
        if not wanted:
            break
        tried.update(k.arn for k in wanted)
        await _describe(api, wanted, metas, gone, errors)
    aws_time, local_time = clock.both() if clock is not None else (None, _wall())
    return Observed(replace(snapshot(), aws_time=aws_time, local_time=local_time), tuple(errors))


def _wall() -> datetime:
    return datetime.now(UTC)


def _now(clock: RunClock | None) -> datetime:
    """AWS's time now, else (no response carried a Date) the local clock: the planner then
    refuses to reclaim, and the local time only decides what to read."""
    if clock is None:
        return _wall()
    found = clock.now()
    return found if found is not None else clock.wall()


async def _describe(
    api: AwsApi,
    keys: Sequence[ObservedKey],
    metas: dict[str, KeyMeta],
    gone: set[str],
    errors: list[str],
) -> None:
    for key, meta, err in await _each(keys, lambda k: api.describe_key(k.arn)):
        if isinstance(err, NotFound):
            gone.add(key.arn)
        elif err is not None:
            errors.append(str(err))
        elif meta is not None:
            metas[key.arn] = meta


async def confirm_tags(api: AwsApi, key_ids: Sequence[str]) -> dict[str, dict[str, str] | AwsError]:
    """Each key's tags as KMS itself holds them, or the error that kept them from being read."""
    found: dict[str, dict[str, str] | AwsError] = {}
    for key_id, tags, err in await _each(key_ids, api.list_resource_tags):
        found[key_id] = err if err is not None else (tags or {})
    return found
