"""The reclaim guards: pure functions from what was observed and proposed to what may be done.

A guard takes the snapshot, the verdicts, the proposed reclaims and the policy, and returns the
reclaims it lets through with, when it held anything back, its :class:`~daemon.model.Refusal`
and why. :func:`fold_guards` applies them in order; a new guard is one function here, one
``Refusal`` member and its tests. They stop what retries, restarts, short intervals and several
daemons sharing a trust domain could otherwise slice into harmless-looking pieces: what they
count is read from AWS, never remembered by one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from daemon import spire
from daemon.model import (
    KEY_STATE_ENABLED,
    KEY_STATE_PENDING_DELETION,
    KeyVerdict,
    ObservedKey,
    ReclaimSnapshot,
    Refusal,
    Verdict,
)
from daemon.plan.common import iso, unix
from daemon.plan.staleness import ReclaimPolicy, judge_tags

#: The shortest pending window AWS allows: a deletion date says the key was scheduled at the
#: latest this long before it.
_SHORTEST_PENDING_WINDOW = timedelta(days=7)
#: Verdicts of a key that shows its server alive (when the key is well formed and Enabled).
LIVE_VERDICTS = frozenset(
    {
        Verdict.FRESH,
        Verdict.YOUNG,
        Verdict.ALIAS_FRESH,
        Verdict.PROTECTED,
        Verdict.FUTURE,
        Verdict.SERVING,
    }
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A key the rules judged dead: ``STALE`` (to mark and schedule) or ``RECLAIMING``."""

    key: ObservedKey
    verdict: Verdict
    reason: str

    @property
    def server_id(self) -> str:
        """The server the key belongs to."""
        return self.key.tags.get(spire.TAG_SERVER_ID, "")


@dataclass(frozen=True, slots=True)
class Proposal:
    """The reclaims a run would make: completions of interrupted ones, and new ones."""

    completions: tuple[Candidate, ...] = ()
    new: tuple[Candidate, ...] = ()

    def __len__(self) -> int:
        return len(self.completions) + len(self.new)

    def all(self) -> tuple[Candidate, ...]:
        """Completions first, then new reclaims."""
        return (*self.completions, *self.new)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the guards let through, and the first refusal among them."""

    proposal: Proposal
    refusal: Refusal | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class GuardRun:
    """What a guard reads of the run: what was observed, what the rules judged, AWS's time and
    the policy."""

    snapshot: ReclaimSnapshot
    verdicts: Sequence[KeyVerdict]
    now: datetime
    policy: ReclaimPolicy


#: A guard: (the run, what the guards before it let through) -> what it lets through.
Guard = Callable[[GuardRun, Proposal], Decision]


def check_clock(
    aws_time: datetime | None, local_time: datetime | None, tolerance: timedelta
) -> str | None:
    """Why the clock guard holds, or None when the local clock agrees with AWS's.

    Both times are read at the same instant. Without AWS's time nothing can be judged.
    """
    if aws_time is None:
        return "no Date header was seen in AWS's responses; cannot check the local clock"
    if local_time is None:
        return None
    skew = local_time - aws_time
    if abs(skew) > tolerance:
        return (
            f"local clock differs from AWS's by {skew.total_seconds():+.0f}s "
            f"(tolerance {tolerance.total_seconds():.0f}s)"
        )
    return None


def clock_guard(run: GuardRun, proposal: Proposal) -> Decision:
    """Act on nothing while the local clock and AWS's disagree."""
    snapshot = run.snapshot
    why = check_clock(snapshot.aws_time, snapshot.local_time, run.policy.clock_skew_tolerance)
    if why is None:
        return Decision(proposal)
    return Decision(Proposal(), Refusal.CLOCK_SKEW, why)


def well_formed_active(key: ObservedKey, trust_domain: str) -> bool:
    """Tagged by SPIRE's rules for an active key: this trust domain, server and key IDs, a stamp
    that parses, ``spire-active=true``. Only such keys count a server in."""
    tags = key.tags
    return (
        tags.get(spire.TAG_TRUST_DOMAIN) == trust_domain
        and bool(tags.get(spire.TAG_SERVER_ID))
        and bool(tags.get(spire.TAG_KEY_ID))
        and tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_TRUE
        and spire.parse_last_update(tags.get(spire.TAG_LAST_UPDATE)) is not None
    )


def _live(key: ObservedKey, verdict: Verdict, trust_domain: str) -> bool:
    return (
        verdict in LIVE_VERDICTS
        and well_formed_active(key, trust_domain)
        and key.meta is not None
        and key.meta.state == KEY_STATE_ENABLED
    )


def _counted(key: ObservedKey, trust_domain: str) -> bool:
    """Whether the key counts its server among the trust domain's: well formed, active, and
    known not to be pending deletion (or disabled)."""
    return (
        well_formed_active(key, trust_domain)
        and key.meta is not None
        and key.meta.state == KEY_STATE_ENABLED
    )


@dataclass(frozen=True, slots=True)
class Servers:
    """The trust domain's servers, as far as the guard can tell."""

    counted: frozenset[str]  # with a well-formed active key known to be Enabled
    live: frozenset[str]  # with a live key (well formed, Enabled, not stale by any rule)
    touched: frozenset[str]  # with a key the proposal would reclaim

    @property
    def total(self) -> frozenset[str]:
        """Every server the share is taken of."""
        return self.counted | self.touched


def servers(
    snapshot: ReclaimSnapshot, verdicts: Sequence[KeyVerdict], proposal: Proposal
) -> Servers:
    """Count the trust domain's servers for the blast-radius guard."""
    by_arn = {v.arn: v.verdict for v in verdicts}
    td = snapshot.trust_domain
    return Servers(
        counted=frozenset(k.tags[spire.TAG_SERVER_ID] for k in snapshot.keys if _counted(k, td)),
        live=frozenset(
            k.tags[spire.TAG_SERVER_ID]
            for k in snapshot.keys
            if _live(k, by_arn.get(k.arn, Verdict.UNKNOWN), td)
        ),
        touched=frozenset(c.server_id for c in proposal.all()),
    )


def blast_radius_guard(run: GuardRun, proposal: Proposal) -> Decision:
    """Refuse, whole, a run that would leave too many of the trust domain's servers without a
    live key. Counted in servers, over well-formed keys known not to be pending deletion: junk
    tags and keys on their way out cannot make the share look small."""
    if not len(proposal):
        return Decision(proposal)
    found = servers(run.snapshot, run.verdicts, proposal)
    policy = run.policy
    dead = found.touched - found.live
    total = found.total
    if len(dead) <= round(policy.max_reclaim_fraction * len(total), 9):
        return Decision(proposal)
    return Decision(
        Proposal(),
        Refusal.BLAST_RADIUS,
        f"{len(dead)} of the trust domain's {len(total)} servers would be left with no live "
        f"key, more than max_reclaim_fraction={policy.max_reclaim_fraction} of them; nothing "
        f"reclaimed ({len(proposal)} keys judged dead)",
    )


def scheduled_at(key: ObservedKey) -> datetime | None:
    """When a key pending deletion was scheduled, as late as AWS's state allows it to have been:
    the daemon's mark, else its deletion date less the shortest pending window."""
    found: list[datetime] = []
    mark = spire.parse_last_update(key.tags.get(spire.TAG_MARKED_AT))
    if mark is not None:
        found.append(datetime.fromtimestamp(mark, UTC))
    deletion = key.meta.deletion_date if key.meta is not None else None
    if deletion is not None:
        found.append(deletion - _SHORTEST_PENDING_WINDOW)
    return max(found) if found else None


def spent(snapshot: ReclaimSnapshot, now: datetime, policy: ReclaimPolicy) -> list[ObservedKey]:
    """The trust domain's keys scheduled for deletion within the last ``policy.window``, by any
    daemon (or SPIRE's own disposal): what the budget has already spent.

    Counted: a key pending deletion that is tagged ``spire-active=false``, or whose tags say
    stale (the tagging index may not show a peer's mark yet, and SPIRE's disposal schedules
    first and then fails to tag). Not counted: a fresh key pending deletion (SPIRE's rotation
    of a key it still stamped). A key marked or stale whose state could not be read may be
    pending: it counts. A pending key whose time cannot be read counts as scheduled just now.
    Every doubt costs budget, never the other way around.
    """
    found = []
    window = policy.window
    for key in snapshot.keys:
        marked = key.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_FALSE
        stale = judge_tags(key.tags, snapshot.trust_domain, now, policy).verdict is None
        if not marked and not stale:
            continue  # fresh, malformed, protected...: not reclaimed by anyone's rules
        if key.meta is None:
            found.append(key)  # state unknown: it may have been scheduled a moment ago
            continue
        if key.meta.state != KEY_STATE_PENDING_DELETION:
            continue
        moment = scheduled_at(key)
        if moment is None or moment > now - window:
            found.append(key)
    return found


def _stalest_first(candidates: Iterable[Candidate]) -> list[Candidate]:
    def rank(c: Candidate) -> tuple[int, str]:
        return spire.parse_last_update(c.key.tags.get(spire.TAG_LAST_UPDATE)) or 0, c.key.arn

    return sorted(candidates, key=rank)


def _oldest_mark_first(candidates: Iterable[Candidate]) -> list[Candidate]:
    def rank(c: Candidate) -> tuple[int, str]:
        return spire.parse_last_update(c.key.tags.get(spire.TAG_MARKED_AT)) or 0, c.key.arn

    return sorted(candidates, key=rank)


def budget_guard(run: GuardRun, proposal: Proposal) -> Decision:
    """Keep the trust domain's deletions within ``max_reclaims`` per window, fleet-wide.

    What is spent is read from AWS, so retries, restarts and every daemon of the trust domain
    share one budget. Over it, the run reclaims what is left of the budget (interrupted
    reclaims first, then the stalest keys), holds the rest back for a later window and ends
    refused, so that a large backlog drains at a known pace instead of at once or never.
    """
    if not len(proposal):
        return Decision(proposal)
    policy, now = run.policy, run.now
    used = spent(run.snapshot, now, policy)
    left = max(0, policy.max_reclaims - len(used))
    ordered = [*_oldest_mark_first(proposal.completions), *_stalest_first(proposal.new)]
    if len(ordered) <= left:
        return Decision(proposal)
    kept = ordered[:left]
    completions = tuple(c for c in kept if c.verdict is Verdict.RECLAIMING)
    new = tuple(c for c in kept if c.verdict is Verdict.STALE)
    held = ordered[left:]
    times = [scheduled_at(k) or now for k in used]
    frees = (
        f"; the oldest of those leaves the window at {iso(unix(min(times) + policy.window))}"
        if times
        else ""
    )
    return Decision(
        Proposal(completions, new),
        Refusal.BUDGET,
        f"{len(ordered)} keys judged dead, but max_reclaims={policy.max_reclaims} per "
        f"{_hours(policy.window)} and {len(used)} already scheduled in that window by any "
        f"daemon{frees}: reclaiming {len(kept)} now (the stalest), holding {len(held)} back "
        f"for a later window ({', '.join(c.key.arn for c in held[:3])}"
        f"{', ...' if len(held) > 3 else ''})",
    )


def _hours(window: timedelta) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours:g}h"


#: The guards, in the order they apply: the clock first (nothing is judged on a contradicted
#: clock), then the share of servers (refused whole), then the budget (trimmed).
GUARDS: tuple[Guard, ...] = (clock_guard, blast_radius_guard, budget_guard)


def fold_guards(guards: Sequence[Guard], run: GuardRun, proposal: Proposal) -> Decision:
    """Apply the guards in order; each sees what the ones before it let through, and the first
    refusal is the run's."""
    decision = Decision(proposal)
    for guard in guards:
        result = guard(run, decision.proposal)
        if decision.refusal is None:
            decision = result
        else:
            decision = replace(decision, proposal=result.proposal)
        if not len(decision.proposal):
            break
    return decision


def fraction_reads(
    snapshot: ReclaimSnapshot,
    verdicts: Sequence[KeyVerdict],
    proposal: Proposal,
    tried: Iterable[str] = (),
    max_fraction: float = 1.0,
) -> list[ObservedKey]:
    """Keys to describe before the blast-radius guard can count servers (empty: nothing needed).

    A server counts, and counts as alive, only through a key known to be Enabled. Asked for, one
    undescribed well-formed key each: every server the proposal touches and that has no live key
    known yet (is it alive?), then just enough other servers to tell whether the dead ones stay
    within ``max_fraction`` of all. ``tried``: ARNs already asked for, whatever came of it. The
    observer describes them and plans again until nothing is asked; nothing is asked when nothing
    would be reclaimed.
    """
    if not len(proposal):
        return []
    td = snapshot.trust_domain
    skip = set(tried)
    found = servers(snapshot, verdicts, proposal)
    open_keys: dict[str, ObservedKey] = {}
    for key in sorted(snapshot.keys, key=lambda k: k.arn):
        if key.meta is None and key.arn not in skip and well_formed_active(key, td):
            open_keys.setdefault(key.tags[spire.TAG_SERVER_ID], key)
    wanted = [
        open_keys[server] for server in sorted(found.touched - found.live) if server in open_keys
    ]
    dead = len(found.touched - found.live)
    needed = math.ceil(round(dead / max_fraction, 9)) if max_fraction > 0 else len(open_keys) + 1
    missing = needed - len(found.total)
    others = [s for s in sorted(open_keys) if s not in found.total]
    wanted += [open_keys[server] for server in others[: max(0, missing)]]
    return wanted
