"""The refresh planner: which of this server's keys serve, which to migrate, stamp and refresh."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime

from daemon import spire
from daemon.model import (
    KEY_STATE_PENDING_DELETION,
    Action,
    ActionKind,
    AliasTarget,
    Anomaly,
    Finding,
    Job,
    KeyMeta,
    KeyVerdict,
    ObservedKey,
    Plan,
    RefreshSnapshot,
    Refusal,
    Verdict,
)
from daemon.plan.common import choose_serving, group_by_key_id, not_spire_shaped, unix


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """The settings the refresh planner needs."""

    migrate_legacy_aliases: bool = True
    refresh_aliases: bool = True


def _identity_conflict(
    alias: AliasTarget | None, snapshot: RefreshSnapshot, spire_key_id: str
) -> tuple[Anomaly, str] | None:
    """Why an alias target is not this server's key: its tags name another owner, or are unknown.

    Migration writes all five SPIRE tags, and an alias refresh keeps the target alive: neither
    may take a key from another server, trust domain or key ID. A target that is ours but marked
    ``spire-active=false`` is re-activated: this server's alias points to it, so it serves.
    """
    if alias is None:
        return None
    tags = alias.target_tags
    if tags is None:
        return (
            Anomaly.LEGACY_NOT_MIGRATED,
            f"alias {alias.alias_name}: the target's tags could not be read",
        )
    expected = {
        spire.TAG_TRUST_DOMAIN: snapshot.trust_domain,
        spire.TAG_SERVER_ID: snapshot.server_id,
        spire.TAG_KEY_ID: spire_key_id,
    }
    for name, value in expected.items():
        if name in tags and tags[name] != value:
            return (
                Anomaly.ALIAS_POINTS_ELSEWHERE,
                f"alias {alias.alias_name} points to a key tagged {name}={tags[name][:80]!r}",
            )
    return None


@dataclass(slots=True)
class _Decided:
    actions: list[Action]
    verdicts: list[KeyVerdict]
    findings: list[Finding]


def _legacy(
    out: _Decided,
    legacy: KeyMeta,
    alias: AliasTarget | None,
    snapshot: RefreshSnapshot,
    spire_key_id: str,
    *,
    now: datetime,
    policy: RefreshPolicy,
) -> bool:
    """Plan an alias target without SPIRE tags; return whether it is this server's to keep."""
    alias_name = alias.alias_name if alias else ""
    if (conflict := _identity_conflict(alias, snapshot, spire_key_id)) is not None:
        anomaly, why = conflict
        out.findings.append(
            Finding(anomaly, legacy.arn, f"{why}; neither retagged nor its alias refreshed")
        )
        return False
    verdict = KeyVerdict(
        legacy.arn,
        Verdict.LEGACY,
        "alias target without SPIRE tags",
        snapshot.server_id,
        spire_key_id,
        legacy.state,
    )
    out.verdicts.append(verdict)
    if not policy.migrate_legacy_aliases:
        out.findings.append(
            Finding(
                Anomaly.LEGACY_NOT_MIGRATED,
                legacy.arn,
                "alias-managed key without SPIRE tags; migrate_legacy_aliases is off",
            )
        )
        return True
    out.actions.append(
        Action(
            ActionKind.MIGRATE,
            legacy.arn,
            legacy.key_id,
            f"alias {alias_name} points to a key without SPIRE tags; applying all five for "
            "tag-based discovery",
            spire_key_id,
            snapshot.server_id,
            spire.spire_tags(snapshot.trust_domain, snapshot.server_id, spire_key_id, unix(now)),
        )
    )
    return True


def _others(
    out: _Decided, members: list[ObservedKey], serving_arn: str | None, server_id: str, kid: str
) -> None:
    """Verdicts for this server's keys of one SPIRE key ID that do not serve."""
    for key in members:
        if key.arn == serving_arn:
            continue
        last = key.tags.get(spire.TAG_LAST_UPDATE)
        if key.meta is None:
            out.verdicts.append(
                KeyVerdict(
                    key.arn, Verdict.UNKNOWN, "state not observed", server_id, kid, None, last
                )
            )
            out.findings.append(Finding(Anomaly.NOT_DESCRIBED, key.arn, "DescribeKey failed"))
            continue
        state = key.meta.state
        if not key.meta.enabled:
            out.verdicts.append(
                KeyVerdict(
                    key.arn, Verdict.NOT_ENABLED, f"key state {state}", server_id, kid, state, last
                )
            )
            if state != KEY_STATE_PENDING_DELETION:
                out.findings.append(Finding(Anomaly.NOT_ENABLED, key.arn, f"key state {state}"))
            continue
        out.verdicts.append(
            KeyVerdict(
                key.arn,
                Verdict.SUPERSEDED,
                f"another key serves {kid}; left to go stale",
                server_id,
                kid,
                state,
                last,
            )
        )
        out.findings.append(
            Finding(Anomaly.SUPERSEDED, key.arn, f"superseded by {serving_arn} for {kid}")
        )


def plan_refresh(snapshot: RefreshSnapshot, now: datetime, policy: RefreshPolicy) -> Plan:
    """Decide which keys serve this server, which to migrate, stamp and whose alias to refresh."""
    stamp = spire.format_last_update(unix(now))
    groups, missing = group_by_key_id(snapshot.tagged)
    tagged_key_ids = {
        k.arn: k.tags[spire.TAG_KEY_ID] for k in snapshot.tagged if k.tags.get(spire.TAG_KEY_ID)
    }
    aliases = {a.spire_key_id: a for a in snapshot.aliases}
    out = _Decided([], [], [])
    out.findings += [
        Finding(Anomaly.MISSING_KEY_ID, k.arn, "tagged for this server, no spire-key-id; skipped")
        for k in missing
    ]

    for spire_key_id in sorted(set(groups) | set(aliases)):
        members = groups.get(spire_key_id, [])
        alias = aliases.get(spire_key_id)
        serving, legacy = choose_serving(members, alias)
        serving_meta: KeyMeta | None = serving.meta if serving is not None else legacy
        ours = True  # the alias target is this server's key (tagged, or legacy and migrated)

        if serving_meta is not None and (why := not_spire_shaped(serving_meta)) is not None:
            out.verdicts.append(
                KeyVerdict(
                    serving_meta.arn,
                    Verdict.NOT_SPIRE,
                    f"{why}: not a key SPIRE made; not kept alive",
                    snapshot.server_id,
                    spire_key_id,
                    serving_meta.state,
                )
            )
            out.findings.append(
                Finding(Anomaly.NOT_SPIRE_KEY, serving_meta.arn, f"{why}; not kept alive")
            )
            ours = False
        elif legacy is not None and legacy.arn in tagged_key_ids:
            # The alias points to a key that already carries SPIRE tags for another key ID:
            # it is not a legacy key, and retagging it would steal it from that key ID.
            out.findings.append(
                Finding(
                    Anomaly.LEGACY_NOT_MIGRATED,
                    legacy.arn,
                    f"alias {alias.alias_name if alias else ''} points to a key tagged "
                    f"spire-key-id={tagged_key_ids[legacy.arn]}; not retagged",
                )
            )
            ours = False
        elif legacy is not None:
            ours = _legacy(out, legacy, alias, snapshot, spire_key_id, now=now, policy=policy)
        elif serving is not None and serving.meta is not None:
            current = serving.tags.get(spire.TAG_LAST_UPDATE)
            by_alias = (
                alias is not None and alias.target is not None and alias.target.arn == serving.arn
            )
            out.verdicts.append(
                KeyVerdict(
                    serving.arn,
                    Verdict.SERVING,
                    "alias target" if by_alias else "newest enabled key",
                    snapshot.server_id,
                    spire_key_id,
                    serving.meta.state,
                    current,
                )
            )
            if current != stamp:
                out.actions.append(
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
            ours
            and policy.refresh_aliases
            and alias is not None
            and alias.target is not None
            and alias.target.enabled
            and serving_meta is not None
            and alias.target.arn == serving_meta.arn
        ):
            out.actions.append(
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
            out.findings.append(
                Finding(
                    Anomaly.ALIAS_TO_DISABLED_KEY,
                    alias.target.arn,
                    f"alias {alias.alias_name} points to a key in state {alias.target.state}:"
                    ' SPIRE fails to start with "found disabled SPIRE key" until the key is'
                    " restored or the alias deleted (docs/operations.md)",
                )
            )
        serving_arn = serving_meta.arn if serving_meta is not None else None
        _others(out, members, serving_arn, snapshot.server_id, spire_key_id)

    plan = Plan(Job.REFRESH, tuple(out.actions), tuple(out.verdicts), tuple(out.findings))
    return _gate(plan, snapshot, policy)


def _gate(plan: Plan, snapshot: RefreshSnapshot, policy: RefreshPolicy) -> Plan:
    """Write nothing for a SPIRE server that is not alive; never call finding nothing success.

    A stamp made from outside SPIRE proves only that the daemon lives: without a live SPIRE
    server behind it, it would keep a dead server's keys alive for as long as the host runs.
    """
    liveness = snapshot.spire
    if liveness is None or not liveness.alive:
        why = liveness.detail if liveness is not None else "the SPIRE server was not probed"
        would = Counter(a.kind.value for a in plan.actions)
        planned = ", ".join(f"{kind} {n}" for kind, n in sorted(would.items())) or "nothing"
        done = f"the run would have made: {planned}" if snapshot.observed else "AWS was not read"
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
