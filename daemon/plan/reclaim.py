"""The reclaim planner: which of the trust domain's keys are dead, and which of them to reclaim now.

``now`` is AWS's time (the snapshot's ``aws_time``), never the host's: a stepped or wrong host
clock must not make a fresh key look stale. Each key is judged by every rule of "stale" and
"never stale"; the keys to reclaim are then passed through the guards of
:mod:`daemon.plan.guards`, which may refuse or trim them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from daemon import spire
from daemon.model import (
    KEY_STATE_PENDING_DELETION,
    Action,
    ActionKind,
    AliasMeta,
    Anomaly,
    Finding,
    Job,
    KeyMeta,
    KeyVerdict,
    ObservedKey,
    Plan,
    ReclaimSnapshot,
    Verdict,
)
from daemon.plan.common import (
    choose_serving,
    group_by_key_id,
    iso,
    not_spire_shaped,
    relevant_tags,
    unix,
)
from daemon.plan.guards import GUARDS, Candidate, GuardRun, Proposal, fold_guards
from daemon.plan.staleness import ReclaimPolicy, judge_tags


def needs_aliases(meta: KeyMeta, now: datetime, policy: ReclaimPolicy) -> bool:
    """Whether the planner needs the key's aliases: Enabled and old enough to reclaim."""
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


def own_serving_arns(snapshot: ReclaimSnapshot) -> set[str]:
    """This server's serving keys, by the same rule the refresh job uses."""
    own = [
        k
        for k in snapshot.keys
        if k.tags.get(spire.TAG_TRUST_DOMAIN) == snapshot.trust_domain
        and k.tags.get(spire.TAG_SERVER_ID) == snapshot.server_id
        and k.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_TRUE
    ]
    groups, _ = group_by_key_id(own)
    aliases = {a.spire_key_id: a for a in snapshot.own_aliases}
    tags_of = {k.arn: k.tags for k in snapshot.keys}
    serving: set[str] = set()
    for spire_key_id in set(groups) | set(aliases):
        members = groups.get(spire_key_id, [])
        tagged, legacy = choose_serving(members, aliases.get(spire_key_id))
        if tagged is not None:
            serving.add(tagged.arn)
        if legacy is not None and _ours(tags_of.get(legacy.arn, {}), snapshot, spire_key_id):
            # Untagged, or tagged for this server and key ID. This server's alias on another
            # server's key does not make that key this server's: it must not live forever.
            serving.add(legacy.arn)
        if tagged is None and legacy is None:
            # Nothing observed says which key serves: keep every member.
            serving.update(m.arn for m in members)
    return serving


def _ours(tags: Mapping[str, str], snapshot: ReclaimSnapshot, spire_key_id: str) -> bool:
    """Whether an alias target's tags leave it this server's key for ``spire_key_id``."""
    expected = {
        spire.TAG_TRUST_DOMAIN: snapshot.trust_domain,
        spire.TAG_SERVER_ID: snapshot.server_id,
        spire.TAG_KEY_ID: spire_key_id,
    }
    return all(tags.get(name, value) == value for name, value in expected.items())


def marked_at(tags: Mapping[str, str]) -> int | None:
    """When the daemon marked the key ``spire-active=false`` (Unix seconds), if it did."""
    return spire.parse_last_update(tags.get(spire.TAG_MARKED_AT))


def _judge_inactive(
    key: ObservedKey, reason: str, now: datetime, policy: ReclaimPolicy
) -> tuple[Verdict, str, Anomaly | None]:
    """An Enabled stale key already marked ``spire-active=false``: whose mark, and how old?"""
    mark = marked_at(key.tags)
    if mark is None:
        return (
            Verdict.INACTIVE,
            "spire-active=false without the daemon's mark: not left by its own interrupted "
            "reclaim (an operator, SPIRE or another tool wrote it); left alone",
            Anomaly.INACTIVE_UNMARKED,
        )
    if mark > unix(now + policy.clock_skew_tolerance):
        return (
            Verdict.INACTIVE,
            f"marked in the future ({iso(mark)}); left alone",
            Anomaly.INACTIVE_UNMARKED,
        )
    if mark <= unix(now - policy.mark_window):
        return (
            Verdict.RESTORED,
            f"marked for reclaim at {iso(mark)}, yet Enabled: restored by an operator; never "
            "deleted again on the daemon's own (re-tag spire-active=true to let it be judged)",
            Anomaly.RESTORED_KEY,
        )
    return Verdict.RECLAIMING, f"interrupted reclaim (marked at {iso(mark)}): {reason}", None


def judge_key(
    key: ObservedKey,
    snapshot: ReclaimSnapshot,
    serving: set[str],
    now: datetime,
    policy: ReclaimPolicy,
) -> tuple[Verdict, str, list[Finding]]:
    """Apply every rule of "stale" and "never stale" to one key of the trust domain."""
    judged = judge_tags(key.tags, snapshot.trust_domain, now, policy)
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
    if (why := not_spire_shaped(meta)) is not None:
        findings.append(Finding(Anomaly.NOT_SPIRE_KEY, key.arn, f"{why}; never reclaimed"))
        return Verdict.NOT_SPIRE, f"{why}: not a key SPIRE made; kept", findings
    if meta.creation_date is None or meta.creation_date > cutoff:
        return Verdict.YOUNG, "created within stale_after (or creation date unknown)", findings
    if key.aliases is None:
        findings.append(Finding(Anomaly.NOT_DESCRIBED, key.arn, "ListAliases failed"))
        return Verdict.UNKNOWN, "aliases not observed; kept", findings
    fresh, undated, why_fresh = _fresh_alias(key.aliases, cutoff)
    if fresh:
        if undated:
            findings.append(Finding(Anomaly.ALIAS_WITHOUT_DATE, key.arn, why_fresh))
        return Verdict.ALIAS_FRESH, why_fresh, findings
    if key.arn in serving:
        return Verdict.SERVING, "this server's serving key; never reclaimed", findings
    if key.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_FALSE:
        verdict, reason, anomaly = _judge_inactive(key, judged.reason, now, policy)
        if anomaly is not None:
            findings.append(Finding(anomaly, key.arn, reason))
        return verdict, reason, findings
    return Verdict.STALE, judged.reason, findings


def _staleness_rank(key: ObservedKey) -> int:
    return spire.parse_last_update(key.tags.get(spire.TAG_LAST_UPDATE)) or 0


@dataclass(frozen=True, slots=True)
class Judged:
    """Every key's verdict, the findings, and the reclaims the rules alone would make."""

    verdicts: tuple[KeyVerdict, ...]
    findings: tuple[Finding, ...]
    proposal: Proposal


def judge_all(snapshot: ReclaimSnapshot, now: datetime, policy: ReclaimPolicy) -> Judged:
    """Judge every key of the snapshot; no guard applied yet."""
    serving = own_serving_arns(snapshot)
    verdicts: list[KeyVerdict] = []
    findings: list[Finding] = []
    candidates: list[Candidate] = []
    for key in snapshot.keys:
        verdict, reason, key_findings = judge_key(key, snapshot, serving, now, policy)
        findings.extend(key_findings)
        verdicts.append(
            KeyVerdict(
                key.arn,
                verdict,
                reason,
                key.tags.get(spire.TAG_SERVER_ID),
                key.tags.get(spire.TAG_KEY_ID),
                key.meta.state if key.meta is not None else None,
                key.tags.get(spire.TAG_LAST_UPDATE),
            )
        )
        if key.meta is not None and verdict in (Verdict.STALE, Verdict.RECLAIMING):
            candidates.append(Candidate(key, verdict, reason))
    proposal = Proposal(
        completions=tuple(c for c in candidates if c.verdict is Verdict.RECLAIMING),
        new=tuple(c for c in candidates if c.verdict is Verdict.STALE),
    )
    return Judged(tuple(verdicts), tuple(findings), proposal)


def plan_reclaim(snapshot: ReclaimSnapshot, policy: ReclaimPolicy) -> Plan:
    """Decide which keys of the trust domain are dead and reclaim them, within the guards.

    Staleness is judged on AWS's time (``snapshot.aws_time``); without it the clock guard
    refuses, and the local time only labels the verdicts.
    """
    now = snapshot.aws_time or snapshot.local_time
    if now is None:
        raise ValueError("a reclaim snapshot needs aws_time (or at least local_time)")
    judged = judge_all(snapshot, now, policy)
    run = GuardRun(snapshot, judged.verdicts, now, policy)
    decided = fold_guards(GUARDS, run, judged.proposal)
    return Plan(
        Job.RECLAIM,
        _actions(decided.proposal, now, policy),
        judged.verdicts,
        judged.findings,
        decided.refusal,
        decided.detail,
    )


def _actions(proposal: Proposal, now: datetime, policy: ReclaimPolicy) -> tuple[Action, ...]:
    """Completions first (only deletion is left), then new reclaims: mark, then schedule."""
    mark_tags = {spire.TAG_ACTIVE: spire.ACTIVE_FALSE, spire.TAG_MARKED_AT: str(unix(now))}
    actions: list[Action] = []
    for candidate in proposal.all():
        key = candidate.key
        assert key.meta is not None
        spire_key_id = key.tags.get(spire.TAG_KEY_ID)
        server_id = key.tags.get(spire.TAG_SERVER_ID)
        expected = relevant_tags(key.tags, policy.protect_tag)
        rank = _staleness_rank(key)
        if candidate.verdict is Verdict.STALE:
            actions.append(
                Action(
                    ActionKind.MARK_INACTIVE,
                    key.arn,
                    key.meta.key_id,
                    f"{candidate.reason}; marked before deletion, since tags freeze once "
                    "deletion is pending",
                    spire_key_id,
                    server_id,
                    mark_tags,
                    expected_tags=expected,
                    staleness_rank=rank,
                )
            )
        actions.append(
            Action(
                ActionKind.SCHEDULE_DELETION,
                key.arn,
                key.meta.key_id,
                candidate.reason,
                spire_key_id,
                server_id,
                expected_tags=expected,
                staleness_rank=rank,
            )
        )
    return tuple(actions)


def confirm(action: Action, kms_tags: Mapping[str, str], protect_tag: str) -> str | None:
    """Why a reclaim action must not go ahead after all, or None.

    Right before the first write, the key's tags are read again from KMS itself (the tagging
    index is only eventually consistent): a stamp written since the index was read, a protect
    tag, a restore, another daemon's mark... anything that differs from what the decision rested
    on keeps the key for this run; the next run judges it again.
    """
    if action.expected_tags is None:
        return None
    expected = dict(action.expected_tags)
    found = relevant_tags(kms_tags, protect_tag)
    if found == expected:
        return None
    changed = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
    return (
        f"KMS's tags differ from the tagging index's ({', '.join(changed)}); kept, the next run "
        "judges it again"
    )
