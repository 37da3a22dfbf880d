"""Pure decisions for the refresh and reclaim jobs.

Given a snapshot (and, for refresh, ``now``), return a :class:`~daemon.model.Plan`. Nothing here
awaits, reads a clock or logs, so every safety rule is a unit test with no AWS at all, and a dry
run is a plan that is never executed. :mod:`daemon.plan.refresh` and
:mod:`daemon.plan.reclaim` hold the two planners, :mod:`daemon.plan.staleness` the rules of
"stale" a key's tags alone decide, and :mod:`daemon.plan.guards` the reclaim guards.
"""

from daemon.plan.common import choose_serving, key_id_from_arn, not_spire_shaped, relevant_tags
from daemon.plan.guards import GUARDS, check_clock, fraction_reads
from daemon.plan.reclaim import (
    Judged,
    confirm,
    judge_all,
    judge_key,
    needs_aliases,
    plan_reclaim,
)
from daemon.plan.refresh import RefreshPolicy, plan_refresh
from daemon.plan.staleness import ReclaimPolicy, judge_tags, needs_state

__all__ = [
    "GUARDS",
    "Judged",
    "ReclaimPolicy",
    "RefreshPolicy",
    "check_clock",
    "choose_serving",
    "confirm",
    "fraction_reads",
    "judge_all",
    "judge_key",
    "judge_tags",
    "key_id_from_arn",
    "needs_aliases",
    "needs_state",
    "not_spire_shaped",
    "plan_reclaim",
    "plan_refresh",
    "relevant_tags",
]
