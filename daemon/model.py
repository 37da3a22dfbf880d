"""Frozen data shared by every layer: what was observed, what was decided, what was done."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

KEY_STATE_ENABLED = "Enabled"
KEY_STATE_DISABLED = "Disabled"
KEY_STATE_PENDING_DELETION = "PendingDeletion"


#: A job's name: its key in the registry (daemon/registry.py), the ``task`` label of its metrics
#: and the name of its settings section. The jobs the daemon ships are :class:`Job`'s members; a
#: job added to the registry names itself.
JobName = str


class Job(StrEnum):
    """The names of the jobs the daemon ships."""

    REFRESH = "refresh"
    RECLAIM = "reclaim"


class ActionKind(StrEnum):
    """A mutating AWS call the planner may decide on."""

    MIGRATE = "migrate"  # kms:TagResource with all five SPIRE tags on an alias-managed key
    STAMP = "stamp"  # spire-last-update=<now> on a serving key
    REFRESH_ALIAS = "refresh_alias"  # kms:UpdateAlias to the same target
    MARK_INACTIVE = "mark_inactive"  # spire-active=false before deletion
    SCHEDULE_DELETION = "schedule_deletion"  # kms:ScheduleKeyDeletion


class Outcome(StrEnum):
    """How an action or a run ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    REFUSED = "refused"
    SKIPPED = "skipped"  # not sent: an earlier step for the same key failed, or stopping
    PLANNED = "planned"  # a dry run decided it and sent nothing


class Verdict(StrEnum):
    """What the planner concluded about one key."""

    SERVING = "serving"  # this server's key for a SPIRE key ID: kept alive
    SUPERSEDED = "superseded"  # this server's older key for the same SPIRE key ID
    LEGACY = "legacy"  # serving, but alias-managed without SPIRE tags
    FRESH = "fresh"
    STALE = "stale"  # to be reclaimed
    RECLAIMING = "reclaiming"  # tagged spire-active=false, still enabled: deletion to complete
    RECLAIMED = "reclaimed"  # pending deletion
    PROTECTED = "protected"  # the protect tag says true
    YOUNG = "young"  # created within stale_after
    ALIAS_FRESH = "alias_fresh"  # a SPIRE alias on it was updated within stale_after
    NOT_ENABLED = "not_enabled"  # Disabled or another state the daemon leaves alone
    MALFORMED = "malformed"  # tags that cannot be trusted: kept and reported
    FUTURE = "future"  # spire-last-update beyond now + clock-skew tolerance
    INACTIVE = "inactive"  # tagged spire-active=false but not stale: left alone
    UNKNOWN = "unknown"  # not enough was observed to judge: kept
    NOT_SPIRE = "not_spire"  # tagged like SPIRE's but not shaped like a SPIRE key: kept
    RESTORED = "restored"  # spire-active=false, Enabled, the daemon's mark is old: restored


class Anomaly(StrEnum):
    """Something observed that an operator should look at."""

    MALFORMED_LAST_UPDATE = "malformed_last_update"
    FUTURE_LAST_UPDATE = "future_last_update"
    MALFORMED_ACTIVE = "malformed_active"
    MISSING_SERVER_ID = "missing_server_id"
    MISSING_KEY_ID = "missing_key_id"
    NOT_ENABLED = "not_enabled"
    SUPERSEDED = "superseded"
    LEGACY_NOT_MIGRATED = "legacy_not_migrated"
    ALIAS_WITHOUT_DATE = "alias_without_date"
    NOT_DESCRIBED = "not_described"
    INACTIVE_NOT_STALE = "inactive_not_stale"
    NOT_SPIRE_KEY = "not_spire_key"  # SPIRE's tags on a key SPIRE could not have made
    RESTORED_KEY = "restored_key"  # reclaimed, then restored by an operator: left alone
    INACTIVE_UNMARKED = "inactive_unmarked"  # spire-active=false not written by the daemon
    TAGS_CHANGED = "tags_changed"  # KMS's tags differ from the tagging index's: kept this run
    ALIAS_POINTS_ELSEWHERE = "alias_points_elsewhere"  # this server's alias, another's key
    #: This server's alias resolves to a key that is not Enabled: SPIRE's start fails on it.
    ALIAS_TO_DISABLED_KEY = "alias_to_disabled_key"


class Refusal(StrEnum):
    """Why a safety guard refused a run's writes."""

    BLAST_RADIUS = "blast_radius"  # too large a share of the trust domain's servers at once
    BUDGET = "budget"  # max_reclaims within one reclaim.interval, fleet-wide: keys held back
    CLOCK_SKEW = "clock_skew"
    SPIRE_NOT_ALIVE = "spire_not_alive"  # refresh: the local SPIRE server did not answer alive


class ProbeFailure(StrEnum):
    """Why the SPIRE server's health endpoint did not say alive."""

    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"  # it answered, but not with 2xx
    UNREACHABLE = "unreachable"  # name resolution, routing, TLS or another connection error
    NOT_CONFIGURED = "not_configured"  # neither spire_health_url nor assume_spire_alive


@dataclass(frozen=True, slots=True)
class Liveness:
    """What the probe of the local SPIRE server's health endpoint found.

    ``url`` None means no probe was made: ``assume_spire_alive`` (alive) or nothing configured
    (not alive).
    """

    alive: bool
    detail: str
    url: str | None = None
    failure: ProbeFailure | None = None
    status: int | None = None


@dataclass(frozen=True, slots=True)
class KeyMeta:
    """A key as DescribeKey shows it. A field DescribeKey did not give is None (unknown)."""

    arn: str
    key_id: str
    state: str
    creation_date: datetime | None = None
    description: str = ""
    key_manager: str | None = None  # CUSTOMER or AWS
    key_usage: str | None = None  # SIGN_VERIFY for SPIRE's keys
    key_spec: str | None = None  # RSA_2048, RSA_4096, ECC_NIST_P256, ECC_NIST_P384 for SPIRE's
    multi_region: bool | None = None
    deletion_date: datetime | None = None  # while PendingDeletion

    @property
    def enabled(self) -> bool:
        """Whether KMS reports the key ``Enabled``."""
        return self.state == KEY_STATE_ENABLED


@dataclass(frozen=True, slots=True)
class AliasMeta:
    """An alias as ListAliases shows it."""

    name: str
    target_key_id: str | None
    last_updated: datetime | None = None
    creation_date: datetime | None = None


@dataclass(frozen=True, slots=True)
class ObservedKey:
    """A key found through its tags, with what else was observed about it."""

    arn: str
    tags: Mapping[str, str]
    meta: KeyMeta | None = None  # None: not described (not needed, or the call failed)
    aliases: tuple[AliasMeta, ...] | None = None  # None: aliases not listed


@dataclass(frozen=True, slots=True)
class AliasTarget:
    """One of this server's alias names and the key it resolves to (DescribeKey on the alias)."""

    alias_name: str
    spire_key_id: str
    target: KeyMeta | None  # None: the alias does not exist
    # Tags already on a target outside this server's tagged keys (empty: none); None: unknown.
    target_tags: Mapping[str, str] | None = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefreshSnapshot:
    """What the refresh job observed about this server's keys."""

    trust_domain: str
    server_id: str
    tagged: tuple[ObservedKey, ...]  # td + id + spire-active=true
    aliases: tuple[AliasTarget, ...]  # one per SPIRE key ID, tagged or legacy
    spire: Liveness | None = None  # the probe of the local SPIRE server; None: not probed
    observed: bool = True  # False: AWS was not read (the first probe already said not alive)


@dataclass(frozen=True, slots=True)
class ReclaimSnapshot:
    """What the reclaim job observed about the trust domain's keys."""

    trust_domain: str
    server_id: str
    keys: tuple[ObservedKey, ...]  # every key tagged with this trust domain
    own_aliases: tuple[AliasTarget, ...] = ()  # this server's aliases for its stale-looking keys
    #: AWS's clock now: the Date of this run's responses, carried on the monotonic clock.
    aws_time: datetime | None = None
    #: The local wall clock, read at the same instant as ``aws_time`` (the clock guard).
    local_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """One mutating AWS call, with the reason it was decided."""

    kind: ActionKind
    arn: str
    key_id: str
    reason: str
    spire_key_id: str | None = None
    server_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    alias_name: str | None = None
    #: Reclaim: the key's tags the decision rests on; KMS's own must still match right before
    #: the first write (the tagging index is only eventually consistent).
    expected_tags: Mapping[str, str] | None = None
    #: Reclaim: how stale the key is (its spire-last-update, 0 when missing): stalest go first.
    staleness_rank: int = 0


@dataclass(frozen=True, slots=True)
class Finding:
    """An anomaly the run reports without acting on it."""

    anomaly: Anomaly
    arn: str
    detail: str


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    """The planner's conclusion about one key, with the rule that led to it."""

    arn: str
    verdict: Verdict
    reason: str
    server_id: str | None = None
    spire_key_id: str | None = None
    state: str | None = None
    last_update: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's output: actions to execute, what it concluded, and any refusal."""

    job: JobName
    actions: tuple[Action, ...] = ()
    verdicts: tuple[KeyVerdict, ...] = ()
    findings: tuple[Finding, ...] = ()
    refusal: Refusal | None = None
    refusal_detail: str = ""
    failure: str | None = None  # nothing failed in AWS, but the run must not look like success


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What happened to one action."""

    action: Action
    outcome: Outcome
    error: str | None = None
    denied: bool = False  # the error is a missing IAM permission


@dataclass(frozen=True, slots=True)
class RunReport:
    """Everything one run observed, decided and did."""

    job: JobName
    plan: Plan
    results: tuple[ActionResult, ...]
    dry_run: bool
    started_at: datetime
    duration_seconds: float
    aws_calls: Mapping[str, int]
    error: str | None = None  # set when the run could not go on
    permission_denied: bool = False  # the error is a missing IAM permission
    read_errors: tuple[str, ...] = ()  # per-key reads that failed; those keys were kept
    spire: Liveness | None = None  # refresh: what the last probe of the SPIRE server found

    @property
    def outcome(self) -> Outcome:
        """``refused`` when a guard held, ``failure`` when anything failed, else ``success``."""
        if self.error is not None:
            return Outcome.FAILURE
        if self.plan.refusal is not None:
            return Outcome.REFUSED
        if self.plan.failure is not None:
            return Outcome.FAILURE
        if self.read_errors or any(r.outcome is Outcome.FAILURE for r in self.results):
            return Outcome.FAILURE
        return Outcome.SUCCESS

    def count(self, kind: ActionKind, outcome: Outcome) -> int:
        """Return how many actions of ``kind`` ended with ``outcome``."""
        return sum(1 for r in self.results if r.action.kind is kind and r.outcome is outcome)
