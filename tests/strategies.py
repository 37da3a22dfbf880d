"""Snapshot builders and hypothesis strategies for the planner's tests.

Builders make one hand-written key or alias at a time; strategies generate whole trust domains:
several servers (this one among them), random and malformed tags, random key states, creation
dates and aliases. A reclaim "world" is the ground truth (every key described, every alias
listed); :func:`derive_observation` derives from it what the observer would hand the planner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from daemon import spire
from daemon.model import (
    KEY_STATE_DISABLED,
    KEY_STATE_ENABLED,
    KEY_STATE_PENDING_DELETION,
    ActionKind,
    AliasMeta,
    AliasTarget,
    KeyMeta,
    Liveness,
    ObservedKey,
    Plan,
    ReclaimSnapshot,
    RefreshSnapshot,
)
from daemon.plan import ReclaimPolicy, RefreshPolicy, choose_serving, needs_aliases, needs_state
from tests.world import TD

OTHER_TD = "example.org2"  # sanitizes to example_org2: a prefix trap for example_org
OWN = "0f8e4c2a-6b1d-4e3f-9a7c-5d2b8e1f3a6c"
#: A probe of the local SPIRE server that answered alive.
ALIVE = Liveness(
    True, "HTTP 200 from http://localhost:8080/live", "http://localhost:8080/live", status=200
)
PEER = "peer-a"
ACCOUNT = "111122223333"
#: A fixed "now" with a fractional second, so that rounding of Unix seconds is exercised.
NOW = datetime(2026, 1, 1, 12, 0, 0, 750_000, tzinfo=UTC)
DAY = timedelta(days=1)
STALE_AFTER = timedelta(days=14)
TOLERANCE = timedelta(minutes=5)

#: SPIRE key IDs used by the generators: few, so that keys of one server collide on a key ID.
KEY_IDS = ("x509-CA-A", "x509-CA-B", "JWT-Signer-A", "bundle-acme-foo.bar+rsa")

#: The planners' property tests: many examples, no deadline (a world takes a while to draw).
property_settings = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

#: spire-last-update values SPIRE's strconv.ParseInt or the daemon's rules refuse.
MALFORMED_LAST_UPDATES = (
    "1.5",
    " 12",
    "12 ",
    "0x10",
    "+5",
    "-5",
    "",
    "0012",
    "00",
    str(2**63),
    str(2**64),
    "١٢",  # Arabic-Indic digits: str.isdigit() but not Unix seconds
    "１２",  # fullwidth digits
    "12\n",
    "\n12",
    "1_000",
    "1e9",
    "12abc",
    "abc",
    "NaN",
)


def unix(moment: datetime) -> int:
    """Unix seconds as the daemon writes them (truncated)."""
    return int(moment.timestamp())


def lu(moment: datetime) -> str:
    """A ``spire-last-update`` value for ``moment``."""
    return str(unix(moment))


def kms_key_id(n: int) -> str:
    """A KMS key ID (UUID form) for key number ``n``."""
    return f"{n:08x}-0000-4000-8000-{n:012x}"


def key_arn(n: int) -> str:
    """The ARN of key number ``n``."""
    return f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{kms_key_id(n)}"


def spire_meta(
    arn: str,
    key_id: str,
    state: str = KEY_STATE_ENABLED,
    created: datetime | None = NOW - 100 * DAY,
    **fields: object,
) -> KeyMeta:
    """DescribeKey's view of a key SPIRE made (customer-managed, single-Region, SIGN_VERIFY,
    ECC_NIST_P256); ``fields`` override any of that."""
    shape: dict[str, object] = {
        "key_manager": "CUSTOMER",
        "key_usage": "SIGN_VERIFY",
        "key_spec": "ECC_NIST_P256",
        "multi_region": False,
    }
    shape.update(fields)
    return KeyMeta(arn, key_id, state, created, **shape)  # type: ignore[arg-type]


def make_meta(
    n: int,
    state: str = KEY_STATE_ENABLED,
    created: datetime | None = NOW - 100 * DAY,
    **fields: object,
) -> KeyMeta:
    """DescribeKey's view of key number ``n``, a SPIRE-shaped key unless ``fields`` say not."""
    return spire_meta(key_arn(n), kms_key_id(n), state, created, **fields)


def make_tags(
    *,
    td: str | None = TD,
    server: str | None = OWN,
    active: str | None = spire.ACTIVE_TRUE,
    key_id: str | None = "x509-CA-A",
    last_update: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """SPIRE's tags; a ``None`` value leaves that tag out."""
    values = {
        spire.TAG_TRUST_DOMAIN: td,
        spire.TAG_SERVER_ID: server,
        spire.TAG_ACTIVE: active,
        spire.TAG_KEY_ID: key_id,
        spire.TAG_LAST_UPDATE: last_update,
    }
    tags = {k: v for k, v in values.items() if v is not None}
    tags.update(extra or {})
    return tags


def make_key(
    n: int,
    *,
    state: str = KEY_STATE_ENABLED,
    created: datetime | None = NOW - 100 * DAY,
    described: bool = True,
    aliases: Sequence[AliasMeta] | None = (),
    meta_fields: Mapping[str, object] | None = None,
    **tags: Any,
) -> ObservedKey:
    """A tagged key as the observer reports it; ``tags`` are :func:`make_tags`'s arguments."""
    meta = make_meta(n, state, created, **dict(meta_fields or {})) if described else None
    aliased = tuple(aliases) if aliases is not None else None
    return ObservedKey(key_arn(n), make_tags(**tags), meta, aliased)


def make_alias_target(
    key_id: str, target: KeyMeta | None, *, server: str = OWN, td: str = TD
) -> AliasTarget:
    """One of a server's aliases, resolved as DescribeKey on the alias resolves it."""
    name = spire.alias_name(td, server, key_id)
    decoded = spire.parse_alias(name, td, server)
    assert decoded is not None
    return AliasTarget(name, decoded, target)


def spire_alias(
    *,
    server: str = PEER,
    key_id: str = "x509-CA-A",
    updated: datetime | None = None,
    created: datetime | None = None,
    td: str = TD,
    target: str | None = None,
) -> AliasMeta:
    """A SPIRE alias on a key, as ListAliases(KeyId=...) shows it."""
    return AliasMeta(spire.alias_name(td, server, key_id), target, updated, created)


# --- simulating the executor -----------------------------------------------------------------


def apply_refresh(snapshot: RefreshSnapshot, plan: Plan) -> RefreshSnapshot:
    """What the next refresh would observe had every action of ``plan`` succeeded."""
    tagged = {k.arn: k for k in snapshot.tagged}
    metas = {a.target.arn: a.target for a in snapshot.aliases if a.target is not None}
    for action in plan.actions:
        if action.kind not in (ActionKind.STAMP, ActionKind.MIGRATE):
            continue
        current = tagged.get(action.arn)
        if current is None:
            tagged[action.arn] = ObservedKey(action.arn, dict(action.tags), metas[action.arn])
        else:
            tagged[action.arn] = replace(current, tags={**current.tags, **action.tags})
    return replace(snapshot, tagged=tuple(tagged.values()))


def apply_reclaim(snapshot: ReclaimSnapshot, plan: Plan) -> ReclaimSnapshot:
    """Apply a reclaim plan to a ground-truth snapshot (tags, key states, alias targets)."""
    keys = {k.arn: k for k in snapshot.keys}
    pending: set[str] = set()
    for action in plan.actions:
        key = keys[action.arn]
        if action.kind is ActionKind.MARK_INACTIVE:
            keys[action.arn] = replace(key, tags={**key.tags, **action.tags})
        elif action.kind is ActionKind.SCHEDULE_DELETION:
            assert key.meta is not None
            keys[action.arn] = replace(
                key, meta=replace(key.meta, state=KEY_STATE_PENDING_DELETION)
            )
            pending.add(action.arn)
        else:  # pragma: no cover - the reclaim planner decides nothing else
            raise AssertionError(f"unexpected action {action.kind}")
    own_aliases = tuple(
        replace(a, target=replace(a.target, state=KEY_STATE_PENDING_DELETION))
        if a.target is not None and a.target.arn in pending
        else a
        for a in snapshot.own_aliases
    )
    return replace(snapshot, keys=tuple(keys.values()), own_aliases=own_aliases)


def derive_observation(
    truth: ReclaimSnapshot, now: datetime, policy: ReclaimPolicy, full_view: bool
) -> ReclaimSnapshot:
    """The observer's view of ``truth``: state only where the planner asks for it."""
    if full_view:
        return truth
    keys = []
    for key in truth.keys:
        if not needs_state(key, truth.trust_domain, now, policy):
            keys.append(replace(key, meta=None, aliases=None))
        elif key.meta is None or not needs_aliases(key.meta, now, policy):
            keys.append(replace(key, aliases=None))
        else:
            keys.append(key)
    return replace(truth, keys=tuple(keys))


def serving_arns(snapshot: RefreshSnapshot | ReclaimSnapshot) -> set[str]:
    """This server's serving keys by choose_serving's rule, over what ``snapshot`` holds."""
    if isinstance(snapshot, RefreshSnapshot):
        own = list(snapshot.tagged)
        aliases = {a.spire_key_id: a for a in snapshot.aliases}
    else:
        own = [
            k
            for k in snapshot.keys
            if k.tags.get(spire.TAG_TRUST_DOMAIN) == snapshot.trust_domain
            and k.tags.get(spire.TAG_SERVER_ID) == snapshot.server_id
            and k.tags.get(spire.TAG_ACTIVE) == spire.ACTIVE_TRUE
        ]
        aliases = {a.spire_key_id: a for a in snapshot.own_aliases}
    groups: dict[str, list[ObservedKey]] = {}
    for key in own:
        kid = key.tags.get(spire.TAG_KEY_ID)
        if kid:
            groups.setdefault(kid, []).append(key)
    result: set[str] = set()
    for kid in set(groups) | set(aliases):
        tagged, legacy = choose_serving(groups.get(kid, []), aliases.get(kid))
        if tagged is not None:
            result.add(tagged.arn)
        if legacy is not None:
            result.add(legacy.arn)
    return result


# --- strategies --------------------------------------------------------------------------------
# Every strategy is built once, at import: building them inside a composite on every draw costs
# more than the planner itself.

nows = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
)

_BOOLS = st.booleans()
_ONE_IN_TEN = st.integers(0, 9)
_STALE_AFTERS = st.sampled_from([STALE_AFTER, 7 * DAY, DAY])
_TOLERANCES = st.sampled_from([TOLERANCE, timedelta(0), timedelta(hours=1)])
_MAX_RECLAIMS = st.sampled_from([0, 1, 2, 3, 10, 1000])
_FRACTIONS = st.sampled_from([0.0, 0.3, 0.5, 0.57, 1.0])
_PROTECT_TAGS = st.sampled_from(["spire-protect", "team-protect"])
_LAST_UPDATE_KINDS = st.sampled_from(["missing", "malformed", "boundary", "any", "any"])
_MALFORMED = st.sampled_from(MALFORMED_LAST_UPDATES)
_BOUNDARY_INDEX = st.integers(0, 6)
_ANY_OFFSET = st.integers(-60 * 86_400, 2 * 86_400)
_MOMENT_KINDS = st.sampled_from(["none", "boundary", "any", "any", "any"])
_ONE_SECOND_OR_NOT = st.sampled_from([timedelta(0), timedelta(seconds=1)])
_AGE_SECONDS = st.integers(-86_400, 60 * 86_400)
_ALIAS_COUNTS = st.integers(0, 2)
_ALIAS_NAME_KINDS = st.integers(0, 3)
_KEY_COUNTS = st.integers(0, 12)
_SERVERS = st.sampled_from([OWN, OWN, OWN, PEER, "peer-b", OWN + "x", "", None])
_KEY_ID_TAGS = st.sampled_from([*KEY_IDS, "", None])
_PROTECT_VALUES = st.sampled_from([None, None, None, "true", "TRUE", "false", "yes"])
_RECLAIM_STATES = st.sampled_from(
    [KEY_STATE_ENABLED] * 4 + [KEY_STATE_DISABLED, KEY_STATE_PENDING_DELETION, "Unavailable"]
)
_TRUST_DOMAIN_TAGS = st.sampled_from([TD, TD, TD, TD, OTHER_TD, "other.org", None])
_ACTIVE_TAGS = st.sampled_from(["true", "true", "true", "false", "false", "TRUE", "", None])
_ALIAS_KEY_IDS = st.lists(st.sampled_from(KEY_IDS), unique=True, max_size=len(KEY_IDS))
_OWN_ALIAS_TARGETS = st.sampled_from(["missing", "key", "key", "legacy", "disabled"])
_AWS_SKEWS = st.sampled_from(["same"] * 6 + ["none", "+tol", "-tol", "+over", "-over"])
_REFRESH_KEY_COUNTS = st.integers(0, 8)
_REFRESH_STATES = st.sampled_from(
    [KEY_STATE_ENABLED] * 4 + [KEY_STATE_DISABLED, KEY_STATE_PENDING_DELETION]
)
_REFRESH_ALIAS_TARGETS = st.sampled_from(["missing", "tagged", "tagged", "legacy", "legacy"])
_LEGACY_POOL = st.integers(0, 2)
_LEGACY_STATES = st.sampled_from([KEY_STATE_ENABLED] * 3 + [KEY_STATE_DISABLED])
#: Mostly SPIRE's shape; now and then a key SPIRE could not have made.
_SHAPES = st.sampled_from(
    [{}] * 12
    + [
        {"key_usage": "ENCRYPT_DECRYPT", "key_spec": "SYMMETRIC_DEFAULT"},
        {"multi_region": True},
        {"key_manager": "AWS"},
        {"key_spec": "ECC_SECG_P256K1"},
        {"key_usage": None},
    ]
)
_MARKS = st.sampled_from(["none", "none", "recent", "recent", "old", "future"])
_DELETION_AGES = st.integers(0, 7 * 86_400)


@st.composite
def reclaim_policies(draw: st.DrawFn) -> ReclaimPolicy:
    """Policies with small and large limits."""
    return ReclaimPolicy(
        stale_after=draw(_STALE_AFTERS),
        clock_skew_tolerance=draw(_TOLERANCES),
        max_reclaims=draw(_MAX_RECLAIMS),
        max_reclaim_fraction=draw(_FRACTIONS),
        protect_tag=draw(_PROTECT_TAGS),
        window=timedelta(hours=48),
        mark_window=timedelta(hours=52),
    )


def draw_last_update(
    draw: st.DrawFn, now: datetime, stale_after: timedelta, tolerance: timedelta
) -> str | None:
    """A ``spire-last-update`` value: missing, malformed, at a rule's boundary, or anywhere."""
    kind = draw(_LAST_UPDATE_KINDS)
    if kind == "missing":
        return None
    if kind == "malformed":
        return draw(_MALFORMED)
    if kind == "boundary":
        stale = int(stale_after.total_seconds())
        tol = int(tolerance.total_seconds())
        offsets = (-stale, -stale - 1, -stale + 1, 0, tol, tol + 1, -(10**9))
        offset = offsets[draw(_BOUNDARY_INDEX)]
    else:
        offset = draw(_ANY_OFFSET)
    return str(max(0, unix(now) + offset))


def draw_moment(draw: st.DrawFn, now: datetime, stale_after: timedelta) -> datetime | None:
    """A creation or alias date: unknown, at the stale boundary, or anywhere in 60 days."""
    kind = draw(_MOMENT_KINDS)
    if kind == "none":
        return None
    if kind == "boundary":
        return now - stale_after + draw(_ONE_SECOND_OR_NOT)
    return now - timedelta(seconds=draw(_AGE_SECONDS))


def draw_key_aliases(
    draw: st.DrawFn, now: datetime, stale_after: timedelta, server: str, key_id: str
) -> tuple[AliasMeta, ...]:
    """The aliases ListAliases(KeyId=...) would return for one key."""
    names = (
        spire.alias_name(TD, server, key_id),
        spire.alias_name(OTHER_TD, server, key_id),
        "alias/team/app",
        "alias/SPIRE_SERVERX/example_org/x/y",
    )
    return tuple(
        AliasMeta(
            names[draw(_ALIAS_NAME_KINDS)],
            None,
            draw_moment(draw, now, stale_after),
            draw_moment(draw, now, stale_after),
        )
        for _ in range(draw(_ALIAS_COUNTS))
    )


@dataclass(frozen=True)
class ReclaimWorld:
    """A generated trust domain for the reclaim planner."""

    truth: ReclaimSnapshot
    now: datetime
    policy: ReclaimPolicy
    full_view: bool

    @property
    def observed(self) -> ReclaimSnapshot:
        """What the observer hands the planner."""
        return derive_observation(self.truth, self.now, self.policy, self.full_view)


@st.composite
def reclaim_worlds(draw: st.DrawFn) -> ReclaimWorld:
    """Several servers (this one among them) sharing a trust domain, plus strangers."""
    now = draw(nows)
    policy = draw(reclaim_policies())
    stale_after, tolerance = policy.stale_after, policy.clock_skew_tolerance
    keys: list[ObservedKey] = []
    for n in range(draw(_KEY_COUNTS)):
        server = draw(_SERVERS)
        key_id = draw(_KEY_ID_TAGS)
        extra: dict[str, str] = {}
        protect = draw(_PROTECT_VALUES)
        if protect is not None:
            extra[policy.protect_tag] = protect
        if draw(_BOOLS):
            extra["team"] = "payments"
        mark = draw(_MARKS)
        if mark != "none":
            offset = {"recent": -3600, "old": -10 * 86_400, "future": 86_400}[mark]
            extra[spire.TAG_MARKED_AT] = str(unix(now) + offset)
        aliases: tuple[AliasMeta, ...] | None = draw_key_aliases(
            draw, now, stale_after, server or PEER, key_id or "x509-CA-A"
        )
        if draw(_ONE_IN_TEN) == 0:
            aliases = None  # ListAliases failed
        tags = make_tags(
            td=draw(_TRUST_DOMAIN_TAGS),
            server=server,
            active=draw(_ACTIVE_TAGS),
            key_id=key_id,
            last_update=draw_last_update(draw, now, stale_after, tolerance),
            extra=extra,
        )
        state = draw(_RECLAIM_STATES)
        deletion = now + 7 * DAY - timedelta(seconds=draw(_DELETION_AGES))
        meta: KeyMeta | None = spire_meta(
            key_arn(n),
            kms_key_id(n),
            state,
            draw_moment(draw, now, stale_after),
            deletion_date=deletion if state == KEY_STATE_PENDING_DELETION else None,
            **cast(dict[str, Any], draw(_SHAPES)),
        )
        if draw(_ONE_IN_TEN) == 0:
            meta = None  # DescribeKey failed
        keys.append(ObservedKey(key_arn(n), tags, meta, aliases))
    own_aliases: list[Any] = []
    for kid in draw(_ALIAS_KEY_IDS):
        choice = draw(_OWN_ALIAS_TARGETS)
        target: KeyMeta | None = None
        if choice == "key" and keys:
            target = keys[draw(st.integers(0, len(keys) - 1))].meta
        elif choice == "legacy":
            target = make_meta(1000 + len(own_aliases), created=draw_moment(draw, now, stale_after))
        elif choice == "disabled":
            target = make_meta(2000 + len(own_aliases), state=KEY_STATE_DISABLED)
        own_aliases.append(make_alias_target(kid, target))
    # ``now`` is AWS's time; the host's wall clock may disagree with it, or AWS sent no Date.
    second = timedelta(seconds=1)
    skew = draw(_AWS_SKEWS)
    local_time = {
        "same": now,
        "none": now,
        "+tol": now + tolerance,
        "-tol": now - tolerance,
        "+over": now + tolerance + second,
        "-over": now - tolerance - second,
    }[skew]
    aws_time = None if skew == "none" else now
    truth = ReclaimSnapshot(TD, OWN, tuple(keys), tuple(own_aliases), aws_time, local_time)
    return ReclaimWorld(truth, now, policy, draw(_BOOLS))


@dataclass(frozen=True)
class RefreshWorld:
    """A generated view of this server's keys for the refresh planner."""

    snapshot: RefreshSnapshot
    now: datetime
    policy: RefreshPolicy


@st.composite
def refresh_worlds(draw: st.DrawFn) -> RefreshWorld:
    """This server's tagged keys and aliases, with legacy, disabled, rotated and missing targets."""
    now = draw(nows)
    policy = RefreshPolicy(migrate_legacy_aliases=draw(_BOOLS), refresh_aliases=draw(_BOOLS))
    metas: list[KeyMeta] = []
    tagged: list[ObservedKey] = []
    for n in range(draw(_REFRESH_KEY_COUNTS)):
        meta = spire_meta(
            key_arn(n),
            kms_key_id(n),
            draw(_REFRESH_STATES),
            draw_moment(draw, now, STALE_AFTER),
            **cast(dict[str, Any], draw(_SHAPES)),
        )
        metas.append(meta)
        last_update = (
            lu(now) if draw(_BOOLS) else draw_last_update(draw, now, STALE_AFTER, TOLERANCE)
        )
        tags = make_tags(server=OWN, key_id=draw(_KEY_ID_TAGS), last_update=last_update)
        described = draw(_ONE_IN_TEN) != 0  # DescribeKey failed for about one key in ten
        tagged.append(ObservedKey(meta.arn, tags, meta if described else None))
    aliases = []
    for kid in draw(_ALIAS_KEY_IDS):
        choice = draw(_REFRESH_ALIAS_TARGETS)
        target: KeyMeta | None = None
        if choice == "tagged" and metas:
            target = metas[draw(st.integers(0, len(metas) - 1))]
        elif choice == "legacy":
            # a small pool, so that two aliases sometimes share one untagged key
            number = 100 + draw(_LEGACY_POOL)
            target = spire_meta(
                key_arn(number), kms_key_id(number), draw(_LEGACY_STATES), NOW - 400 * DAY
            )
        aliases.append(make_alias_target(kid, target))
    # a legacy key shared by two aliases must look the same through both
    seen: dict[str, KeyMeta] = {}
    consistent = []
    for alias in aliases:
        target = alias.target
        if target is not None:
            target = seen.setdefault(target.arn, target)
        consistent.append(replace(alias, target=target))
    snapshot = RefreshSnapshot(TD, OWN, tuple(tagged), tuple(consistent), ALIVE)
    return RefreshWorld(snapshot, now, policy)
