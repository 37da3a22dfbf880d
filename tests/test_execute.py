"""The executor's steps: which action kinds each takes, and the order their calls reach AWS."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.execute import STEPS
from daemon.model import ActionKind
from devtools.emulator import Emulator
from devtools.faultproxy import FaultProxy
from tests.cli_runs import run
from tests.world import PEER, SERVER, TD, own_key, tag_only_key


def test_every_action_kind_has_exactly_one_step() -> None:
    kinds = [kind for step in STEPS for kind in step.kinds]
    assert sorted(kinds) == sorted(ActionKind)


def test_aliases_first_and_each_mark_before_its_deletion() -> None:
    order = [kind for step in STEPS for kind in step.kinds]
    assert order[0] is ActionKind.REFRESH_ALIAS
    assert order.index(ActionKind.MARK_INACTIVE) < order.index(ActionKind.SCHEDULE_DELETION)


@pytest.mark.integration
def test_calls_reach_aws_in_the_steps_order(
    aws: Emulator,
    proxy: FaultProxy,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """One refresh that refreshes aliases, migrates and stamps, then one reclaim that marks and
    schedules: the calls come in the steps' order, and each deletion after its key's mark."""
    own_key(aws, "x509-CA-A", 7)  # stamped and its alias refreshed
    aws.spire_key(TD, SERVER, "JWT-Signer-A", last_update=None, tagged=False)  # migrated
    dead = [tag_only_key(aws, PEER, kid, 20) for kid in ("x509-CA-A", "JWT-Signer-A")]
    code, out, err = run(capsys, "once", "--config", str(config))
    assert code == 0, out + err

    writes = [
        e
        for e in proxy.exchanges()
        if e.operation in ("UpdateAlias", "TagResource", "TagResources", "ScheduleKeyDeletion")
    ]
    kinds = [_kind(e.operation, e.body) for e in writes]
    assert kinds == sorted(kinds, key=_STEP_ORDER.index), kinds
    assert set(kinds) == set(_STEP_ORDER), kinds
    for arn in dead:
        key_id = arn.split(":key/", 1)[1]
        touching = [k for e, k in zip(writes, kinds, strict=True) if key_id in str(e.body)]
        assert touching == ["mark", "schedule"], (arn, touching)


_STEP_ORDER = ["alias", "migrate", "stamp", "mark", "schedule"]


def _kind(operation: str, body: dict[str, object]) -> str:
    if operation == "UpdateAlias":
        return "alias"
    if operation == "ScheduleKeyDeletion":
        return "schedule"
    tags = str(body.get("Tags"))
    if "spire-active" in tags and "false" in tags:
        return "mark"
    if "spire-server-td" in tags:
        return "migrate"
    return "stamp"
