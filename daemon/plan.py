"""Pure decisions for the refresh and reclaim jobs.

Given a snapshot and ``now``, return a :class:`~daemon.model.Plan`. Nothing here awaits, reads a
clock or logs, so every safety rule is a unit test with no AWS at all, and a dry run is a plan that
is never executed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from daemon import spire
from daemon.model import (
    KEY_STATE_PENDING_DELETION,
    Action,
    ActionKind,
    AliasMeta,
    AliasTarget,
    Anomaly,
    Finding,
    Job,
    KeyMeta,
    KeyVerdict,
    ObservedKey,
    Plan,
    ReclaimSnapshot,
    RefreshSnapshot,
    Refusal,
    Verdict,
)


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """The settings the refresh planner needs."""

    migrate_legacy_aliases: bool = True
    refresh_aliases: bool = True


@dataclass(frozen=True, slots=True)
class ReclaimPolicy:
    """The settings the reclaim planner needs."""

    stale_after: timedelta = timedelta(days=14)
    clock_skew_tolerance: timedelta = timedelta(minutes=5)
    max_reclaims_per_run: int = 10
    max_reclaim_fraction: float = 0.5
    protect_tag: str = "spire-protect"


def key_id_from_arn(arn: str) -> str:
    """Return the KMS key ID of a key ARN (``arn:aws:kms:<region>:<acct>:key/<id>``)."""
    _, _, resource = arn.rpartition(":")
    return resource.removeprefix("key/")


def _iso(unix_seconds: int) -> str:
    """Unix seconds (at most now plus the clock tolerance here) as an ISO 8601 UTC time."""
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def _created(meta: KeyMeta | None) -> datetime | None:
    return meta.creation_date if meta is not None else None


def _newest_first(keys: Iterable[ObservedKey]) -> list[ObservedKey]:
    """Order keys newest CreationDate first; unknown dates last; ARN breaks ties."""

    def sort_key(key: ObservedKey) -> tuple[int, float, str]:
        created = _created(key.meta)
        if created is None:
            return (1, 0.0, key.arn)
        return (0, -created.timestamp(), key.arn)

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
    ordered = _newest_first(enabled)
    return (ordered[0] if ordered else None), None


def _group_by_key_id(
    keys: Iterable[ObservedKey],
) -> tuple[dict[str, list[ObservedKey]], list[ObservedKey]]:
    groups: dict[str, list[ObservedKey]] = {}
    missing: list[ObservedKey] = []
    for key in keys:
        kid = key.tags.get(spire.TAG_KEY_ID)
        if not kid:
            missing.append(key)
        else:
            groups.setdefault(kid, []).append(key)
    return groups, missing


def _identity_conflict(
    alias: AliasTarget | None, snapshot: RefreshSnapshot, spire_key_id: str
) -> str | None:
    """Why an alias target must not be migrated: its tags name another owner, or are unknown.

    Migration writes all five SPIRE tags; it must never take a key from another server, trust
    domain or key ID. A target that is ours but marked ``spire-active=false`` is re-activated:
    this server's alias points to it, so it serves.
    """
    if alias is None:
        return None
    tags = alias.target_tags
    if tags is None:
        return f"alias {alias.alias_name}: the target's tags could not be read; not migrated"
    expected = {
        spire.TAG_TRUST_DOMAIN: snapshot.trust_domain,
        spire.TAG_SERVER_ID: snapshot.server_id,
        spire.TAG_KEY_ID: spire_key_id,
    }
    for name, value in expected.items():
        if name in tags and tags[name] != value:
            return (
                f"alias {alias.alias_name} points to a key tagged {name}={tags[name][:80]!r}; "
                "not retagged"
            )
    return None


def plan_refresh(snapshot: RefreshSnapshot, now: datetime, policy: RefreshPolicy) -> Plan:
    """Decide which keys serve this server, which to migrate, stamp and whose alias to refresh."""
    stamp = spire.format_last_update(_unix(now))
    groups, missing = _group_by_key_id(snapshot.tagged)
    tagged_key_ids = {
        k.arn: k.tags[spire.TAG_KEY_ID] for k in snapshot.tagged if k.tags.get(spire.TAG_KEY_ID)
    }
    aliases = {a.spire_key_id: a for a in snapshot.aliases}
    actions: list[Action] = []
    verdicts: list[KeyVerdict] = []
    findings: list[Finding] = [
        Finding(Anomaly.MISSING_KEY_ID, k.arn, "tagged for this server, no spire-key-id; skipped")
        for k in missing
    ]

    for spire_key_id in sorted(set(groups) | set(aliases)):
        members = groups.get(spire_key_id, [])
        alias = aliases.get(spire_key_id)
        serving, legacy = choose_serving(members, alias)
        serving_meta: KeyMeta | None = serving.meta if serving is not None else legacy

        if legacy is not None and legacy.arn in tagged_key_ids:
            # The alias points to a key that already carries SPIRE tags for another key ID:
            # it is not a legacy key, and retagging it would steal it from that key ID.
            findings.append(
                Finding(
                    Anomaly.LEGACY_NOT_MIGRATED,
                    legacy.arn,
                    f"alias {alias.alias_name if alias else ''} points to a key tagged "
                    f"spire-key-id={tagged_key_ids[legacy.arn]}; not retagged",
                )
            )
        elif legacy is not None and (conflict := _identity_conflict(alias, snapshot, spire_key_id)):
            findings.append(Finding(Anomaly.LEGACY_NOT_MIGRATED, legacy.arn, conflict))
        elif legacy is not None:
            base = KeyVerdict(
                legacy.arn,
                Verdict.LEGACY,
                "alias target without SPIRE tags",
                snapshot.server_id,
                spire_key_id,
                legacy.state,
            )
            if policy.migrate_legacy_aliases:
                actions.append(
                    Action(
                        ActionKind.MIGRATE,
                        legacy.arn,
                        legacy.key_id,
                        f"alias {alias.alias_name if alias else ''} points to a key without "
                        "SPIRE tags; applying all five for tag-based discovery",
                        spire_key_id,
                        snapshot.server_id,
                        spire.spire_tags(
                            snapshot.trust_domain, snapshot.server_id, spire_key_id, _unix(now)
                        ),
                    )
                )
                verdicts.append(base)
            else:
                verdicts.append(base)
                findings.append(
                    Finding(
                        Anomaly.LEGACY_NOT_MIGRATED,
                        legacy.arn,
                        "alias-managed key without SPIRE tags; migrate_legacy_aliases is off",
                    )
                )
        elif serving is not None and serving.meta is not None:
            current = serving.tags.get(spire.TAG_LAST_UPDATE)
            verdicts.append(
                KeyVerdict(
                    serving.arn,
                    Verdict.SERVING,
                    "alias target"
                    if legacy is None
                    and alias is not None
                    and alias.target is not None
                    and alias.target.arn == serving.arn
                    else "newest enabled key",
                    snapshot.server_id,
                    spire_key_id,
                    serving.meta.state,
                    current,
                )
            )
            if current != stamp:
                actions.append(
                    Action(
                        ActionKind.STAMP,
                        serving.arn,
                        serving.meta.key_id,
                        "serving key keep-alive",
                        spire_key_id,
                        snapshot.server_id,
                        {spire.TAG_LAST_UPDATE: stamp},
                    )
                )

        if (
            policy.refresh_aliases
            and alias is not None
            and alias.target is not None
            and alias.target.enabled
            and serving_meta is not None
            and alias.target.arn == serving_meta.arn
        ):
            actions.append(
                Action(
                    ActionKind.REFRESH_ALIAS,
                    serving_meta.arn,
                    serving_meta.key_id,
                    "keep the alias's LastUpdatedDate fresh for alias-mode peers and downgrades",
                    spire_key_id,
                    snapshot.server_id,
                    alias_name=alias.alias_name,
                )
            )
        if alias is not None and alias.target is not None and not alias.target.enabled:
            findings.append(
                Finding(
                    Anomaly.NOT_ENABLED,
                    alias.target.arn,
                    f"alias {alias.alias_name} points to a key in state {alias.target.state}",
                )
            )

        serving_arn = serving_meta.arn if serving_meta is not None else None
        for key in members:
            if key.arn == serving_arn:
                continue
            state = key.meta.state if key.meta is not None else None
            if key.meta is None:
                verdicts.append(
                    KeyVerdict(
                        key.arn,
                        Verdict.UNKNOWN,
                        "state not observed",
                        snapshot.server_id,
                        spire_key_id,
                        None,
                        key.tags.get(spire.TAG_LAST_UPDATE),
                    )
                )
                findings.append(Finding(Anomaly.NOT_DESCRIBED, key.arn, "DescribeKey failed"))
            elif not key.meta.enabled:
                verdicts.append(
                    KeyVerdict(
                        key.arn,
                        Verdict.NOT_ENABLED,
                        f"key state {state}",
                        snapshot.server_id,
                        spire_key_id,
                        state,
                        key.tags.get(spire.TAG_LAST_UPDATE),
                    )
                )
                if state != KEY_STATE_PENDING_DELETION:
                    findings.append(Finding(Anomaly.NOT_ENABLED, key.arn, f"key state {state}"))
            else:
                verdicts.append(
                    KeyVerdict(
                        key.arn,
                        Verdict.SUPERSEDED,
                        f"another key serves {spire_key_id}; left to go stale",
                        snapshot.server_id,
                        spire_key_id,
                        state,
                        key.tags.get(spire.TAG_LAST_UPDATE),
                    )
                )
                findings.append(
                    Finding(
                        Anomaly.SUPERSEDED,
                        key.arn,
                        f"superseded by {serving_arn} for {spire_key_id}",
                    )
                )

    plan = Plan(Job.REFRESH, tuple(actions), tuple(verdicts), tuple(findings))
    return _gate_refresh(plan, snapshot, policy)


def _gate_refresh(plan: Plan, snapshot: RefreshSnapshot, policy: RefreshPolicy) -> Plan:
    """Write nothing for a SPIRE server that is not alive; never call finding nothing success.

    A stamp made from outside SPIRE proves only that the daemon lives: without a live SPIRE
    server behind it, it would keep a dead server's keys alive for as long as the host runs.
    """
    liveness = snapshot.spire
    if liveness is None or not liveness.alive:
        why = liveness.detail if liveness is not None else "the SPIRE server was not probed"
        would = Counter(a.kind.value for a in plan.actions)
        planned = ", ".join(f"{kind} {n}" for kind, n in sorted(would.items())) or "nothing"
        done = (
            f"the run would have made: {planned}" if snapshot.observed else "AWS was not even read"
        )
        return replace(
            plan,
            actions=(),
            refusal=Refusal.SPIRE_NOT_ALIVE,
            refusal_detail=f"the SPIRE server is not alive ({why}); no stamp, migration or "
            f"alias refresh is made for it ({done})",
        )
    found = snapshot.tagged or any(a.target is not None for a in snapshot.aliases)
    if not found:
        where = (
            f"no key tagged {spire.TAG_TRUST_DOMAIN}={snapshot.trust_domain}, "
            f"{spire.TAG_SERVER_ID}={snapshot.server_id}, {spire.TAG_ACTIVE}=true"
        )
        prefix = spire.alias_prefix(snapshot.trust_domain, snapshot.server_id)
        if policy.migrate_legacy_aliases:
            where += f", and no alias named {prefix}*"
        else:
            where += (
                f"; aliases {prefix}* of untagged keys were not looked for "
                "(migrate_legacy_aliases = false)"
            )
        return replace(plan, failure=f"no key of this server found: {where}")
    return plan


# --- reclaim -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TagJudgement:
    """What the tags alone say about a key, before any AWS state is known."""

    verdict: Verdict | None  # None: stale by its tags, pending the state checks
    reason: str
    anomaly: Anomaly | None = None


def _judge_tags(
    tags: Mapping[str, str], trust_domain: str, now: datetime, policy: ReclaimPolicy
) -> _TagJudgement:
    if tags.get(spire.TAG_TRUST_DOMAIN) != trust_domain:
        return _TagJudgement(Verdict.UNKNOWN, "not tagged with this trust domain")
    if not tags.get(spire.TAG_SERVER_ID):
        return _TagJudgement(Verdict.MALFORMED, "no spire-server-id tag", Anomaly.MISSING_SERVER_ID)
    active = tags.get(spire.TAG_ACTIVE)
    if active not in (spire.ACTIVE_TRUE, spire.ACTIVE_FALSE):
        return _TagJudgement(
            Verdict.MALFORMED,
            f"spire-active is {active!r}, not true or false",
            Anomaly.MALFORMED_ACTIVE,
        )
    if not tags.get(spire.TAG_KEY_ID):
        return _TagJudgement(Verdict.MALFORMED, "no spire-key-id tag", Anomaly.MISSING_KEY_ID)
    if tags.get(policy.protect_tag, "").strip().lower() == "true":
        return _TagJudgement(Verdict.PROTECTED, f"{policy.protect_tag}=true")
    raw = tags.get(spire.TAG_LAST_UPDATE)
    if raw is not None:
        parsed = spire.parse_last_update(raw)
        if parsed is None:
            return _TagJudgement(
                Verdict.MALFORMED,
                f"spire-last-update {raw[:40]!r} is not Unix seconds",
                Anomaly.MALFORMED_LAST_UPDATE,
            )
        if parsed > _unix(now + policy.clock_skew_tolerance):
            return _TagJudgement(
                Verdict.FUTURE,
                f"spire-last-update {parsed} is in the future",
                Anomaly.FUTURE_LAST_UPDATE,
            )
        if parsed > _unix(now - policy.stale_after):
            if active == spire.ACTIVE_FALSE:
                return _TagJudgement(
                    Verdict.INACTIVE,
                    "spire-active=false but refreshed recently",
                    Anomaly.INACTIVE_NOT_STALE,
                )
            return _TagJudgement(Verdict.FRESH, f"refreshed at {_iso(parsed)} ({parsed})")
        return _TagJudgement(None, f"not refreshed since {_iso(parsed)} ({parsed})")
    return _TagJudgement(None, "no spire-last-update tag")


def needs_state(key: ObservedKey, trust_domain: str, now: datetime, policy: ReclaimPolicy) -> bool:
    """Return whether the reclaim planner needs DescribeKey for ``key`` (its tags say stale)."""
    return _judge_tags(key.tags, trust_domain, now, policy).verdict is None


def needs_aliases(meta: KeyMeta, now: datetime, policy: ReclaimPolicy) -> bool:
    """Return whether the planner needs the key's aliases: Enabled and old enough to reclaim."""
    if not meta.enabled or meta.creation_date is None:
        return False
    return meta.creation_date <= now - policy.stale_after


def _fresh_alias(aliases: Sequence[AliasMeta], cutoff: datetime) -> tuple[bool, bool, str]:
    """Return (fresh, undated, why) for the SPIRE aliases on one key.

    An alias-mode server keeps its alias's LastUpdatedDate fresh; an alias with no date at all
    cannot be judged and counts as fresh.
    """
    for alias in aliases:
        if not spire.is_spire_alias(alias.name):
            continue
        moment = alias.last_updated or alias.creation_date
        if moment is None:
            return True, True, f"alias {alias.name} has no date; assumed in use"
        if moment > cutoff:
            return True, False, f"alias {alias.name} updated at {moment.isoformat()}"
    return False, False, ""


def _own_serving_arns(snapshot: ReclaimSnapshot) -> set[str]:
    """This server's serving keys, by the same rule the refresh job uses."""
    own = [
        k
        for k in snapshot.keys
        if k.tags.get(spire.TAG_TRUST_DOMAIN) == snapshot.trust_domain
        and k.tags.get(spire.TAG_SERVER_ID) == snapshot.server_id
        and k.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_TRUE
    ]
    groups, _ = _group_by_key_id(own)
    aliases = {a.spire_key_id: a for a in snapshot.own_aliases}
    serving: set[str] = set()
    for spire_key_id in set(groups) | set(aliases):
        members = groups.get(spire_key_id, [])
        tagged, legacy = choose_serving(members, aliases.get(spire_key_id))
        if tagged is not None:
            serving.add(tagged.arn)
        if legacy is not None:
            serving.add(legacy.arn)
        if tagged is None and legacy is None:
            # Nothing observed says which key serves: keep every member.
            serving.update(m.arn for m in members)
    return serving


def check_clock(aws_time: datetime | None, now: datetime, tolerance: timedelta) -> str | None:
    """Return why the clock guard holds, or ``None`` when the local clock agrees with AWS."""
    if aws_time is None:
        return "no Date header was seen in AWS's responses; cannot check the local clock"
    skew = now - aws_time
    if abs(skew) > tolerance:
        return (
            f"local clock differs from AWS's by {skew.total_seconds():+.0f}s "
            f"(tolerance {tolerance.total_seconds():.0f}s)"
        )
    return None


def _judge_key(
    key: ObservedKey,
    snapshot: ReclaimSnapshot,
    serving: set[str],
    now: datetime,
    policy: ReclaimPolicy,
) -> tuple[Verdict, str, list[Finding]]:
    """Apply every rule of "stale" and "never stale" to one key of the trust domain."""
    judged = _judge_tags(key.tags, snapshot.trust_domain, now, policy)
    findings = [] if judged.anomaly is None else [Finding(judged.anomaly, key.arn, judged.reason)]
    if judged.verdict is not None:
        return judged.verdict, judged.reason, findings
    meta = key.meta
    cutoff = now - policy.stale_after
    if meta is None:
        findings.append(Finding(Anomaly.NOT_DESCRIBED, key.arn, "DescribeKey failed"))
        return Verdict.UNKNOWN, "key state not observed; kept", findings
    if meta.state == KEY_STATE_PENDING_DELETION:
        return Verdict.RECLAIMED, "pending deletion", findings
    if not meta.enabled:
        return Verdict.NOT_ENABLED, f"key state {meta.state}; left alone", findings
    if meta.creation_date is None or meta.creation_date > cutoff:
        return Verdict.YOUNG, "created within stale_after (or creation date unknown)", findings
    if key.aliases is None:
        findings.append(Finding(Anomaly.NOT_DESCRIBED, key.arn, "ListAliases failed"))
        return Verdict.UNKNOWN, "aliases not observed; kept", findings
    fresh, undated, why = _fresh_alias(key.aliases, cutoff)
    if fresh:
        if undated:
            findings.append(Finding(Anomaly.ALIAS_WITHOUT_DATE, key.arn, why))
        return Verdict.ALIAS_FRESH, why, findings
    if key.arn in serving:
        return Verdict.SERVING, "this server's serving key; never reclaimed", findings
    if key.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_FALSE:
        return Verdict.RECLAIMING, f"interrupted reclaim, still stale: {judged.reason}", findings
    return Verdict.STALE, judged.reason, findings


def plan_reclaim(snapshot: ReclaimSnapshot, now: datetime, policy: ReclaimPolicy) -> Plan:
    """Decide which keys of the trust domain are dead and reclaim them, within the guards."""
    serving = _own_serving_arns(snapshot)
    verdicts: list[KeyVerdict] = []
    findings: list[Finding] = []
    completions: list[Action] = []
    new_reclaims: list[Action] = []
    for key in snapshot.keys:
        verdict, reason, key_findings = _judge_key(key, snapshot, serving, now, policy)
        findings.extend(key_findings)
        server_id = key.tags.get(spire.TAG_SERVER_ID)
        spire_key_id = key.tags.get(spire.TAG_KEY_ID)
        verdicts.append(
            KeyVerdict(
                key.arn,
                verdict,
                reason,
                server_id,
                spire_key_id,
                key.meta.state if key.meta is not None else None,
                key.tags.get(spire.TAG_LAST_UPDATE),
            )
        )
        if key.meta is None or verdict not in (Verdict.STALE, Verdict.RECLAIMING):
            continue
        schedule = Action(
            ActionKind.SCHEDULE_DELETION,
            key.arn,
            key.meta.key_id,
            reason,
            spire_key_id=spire_key_id,
            server_id=server_id,
        )
        if verdict is Verdict.RECLAIMING:
            completions.append(schedule)
            continue
        new_reclaims.append(
            Action(
                ActionKind.MARK_INACTIVE,
                key.arn,
                key.meta.key_id,
                f"{reason}; marked before deletion, since tags freeze once deletion is pending",
                spire_key_id=spire_key_id,
                server_id=server_id,
                tags={spire.TAG_ACTIVE: spire.ACTIVE_FALSE},
            )
        )
        new_reclaims.append(schedule)

    done = Plan(Job.RECLAIM, (), tuple(verdicts), tuple(findings))
    clock = check_clock(snapshot.aws_time, now, policy.clock_skew_tolerance)
    if clock is not None:
        return replace(done, refusal=Refusal.CLOCK_SKEW, refusal_detail=clock)
    newly = sum(1 for a in new_reclaims if a.kind is ActionKind.MARK_INACTIVE)
    active_total = sum(
        1
        for k in snapshot.keys
        if k.tags.get(spire.TAG_TRUST_DOMAIN) == snapshot.trust_domain
        and k.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_TRUE
    )
    guard = blast_radius(newly, active_total, policy)
    if guard is not None:
        # Completions were decided by an earlier run and are judged stale afresh: they go on.
        return replace(
            done,
            actions=tuple(completions),
            refusal=Refusal.BLAST_RADIUS,
            refusal_detail=guard,
        )
    return replace(done, actions=tuple(completions + new_reclaims))


def blast_radius(newly: int, active_total: int, policy: ReclaimPolicy) -> str | None:
    """Return why the blast-radius guard holds, or ``None`` when ``newly`` reclaims are allowed."""
    if newly == 0:
        return None
    if newly > policy.max_reclaims_per_run:
        return (
            f"{newly} keys would be reclaimed, more than max_reclaims_per_run="
            f"{policy.max_reclaims_per_run}"
        )
    if newly > round(policy.max_reclaim_fraction * active_total, 9):
        return (
            f"{newly} of {active_total} active keys would be reclaimed, more than "
            f"max_reclaim_fraction={policy.max_reclaim_fraction}"
        )
    return None
