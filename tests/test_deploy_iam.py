"""The IAM policies, checked against the operations each job makes (derived from the code)."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from daemon import spire
from daemon.aws.client import MUTATING_OPERATIONS, AwsOptions
from daemon.aws.errors import IAM_ACTIONS
from daemon.aws.session import open_aws
from daemon.jobs import Context, reclaim_once, refresh_once
from daemon.model import Job, Outcome
from daemon.settings import load_settings
from devtools.emulator import ACCOUNT_ID, REGION, Emulator
from tests.deploy_common import IAM, ROOT
from tests.world import LIVE_PEER, OTHER_TD, PEER, SERVER, TD

# --- IAM: the operations each job makes, derived from the code ----------------------------------


#: AwsApi's methods that make a call, and where the operation's name stands among their arguments.
_CALLERS = {"_call": 1, "_kms_pages": 0}


def _api_operations() -> dict[str, set[str]]:
    """AwsApi method -> the AWS operations it calls (``self._call(client, "Operation")``, or
    ``self._kms_pages("Operation", ...)``)."""
    tree = ast.parse((ROOT / "daemon" / "aws" / "client.py").read_text(encoding="utf-8"))
    (api,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AwsApi"]
    direct: dict[str, set[str]] = {}
    calls: dict[str, set[str]] = {}
    for method in api.body:
        if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        direct[method.name], calls[method.name] = set(), set()
        for node in ast.walk(method):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func
            if not (isinstance(target.value, ast.Name) and target.value.id == "self"):
                continue
            if target.attr in _CALLERS:
                operation = node.args[_CALLERS[target.attr]]
                if method.name in _CALLERS and isinstance(operation, ast.Name):
                    continue  # the pager passes on the operation its callers name
                assert isinstance(operation, ast.Constant), ast.dump(node)
                direct[method.name].add(str(operation.value))
            else:
                calls[method.name].add(target.attr)
    resolved: dict[str, set[str]] = {}

    def ops(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        found = set(direct.get(name, ()))
        for callee in calls.get(name, ()):
            if callee not in seen:
                found |= ops(callee, seen | {name})
        return found

    for name in direct:
        if not name.startswith("_"):
            resolved[name] = ops(name)
    return resolved


_JOB_MODULES = ("jobs/frame", "jobs/refresh", "jobs/reclaim", "observe", "execute")


def _reachable_operations(entry: str) -> set[str]:
    """Operations reachable from ``entry`` (``module:function``) through the jobs, observe and
    execute."""
    api_ops = _api_operations()
    functions: dict[str, ast.AST] = {}
    imports: dict[str, dict[str, str]] = {}
    for module in _JOB_MODULES:
        tree = ast.parse((ROOT / "daemon" / f"{module}.py").read_text(encoding="utf-8"))
        imports[module] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions[f"{module}:{node.name}"] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                # A table of functions (the executor's STEPS): followed like a function.
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        functions[f"{module}:{target.id}"] = node
            elif isinstance(node, ast.ImportFrom) and node.module:
                source = node.module.removeprefix("daemon.").replace(".", "/")
                if source in _JOB_MODULES:
                    for alias in node.names:
                        imports[module][alias.asname or alias.name] = f"{source}:{alias.name}"
    found: set[str] = set()
    seen: set[str] = set()
    todo = [entry]
    while todo:
        qualified = todo.pop()
        if qualified in seen:
            continue
        seen.add(qualified)
        module = qualified.split(":")[0]
        for call in ast.walk(functions[qualified]):
            # a function called, handed on, or a table of them named
            if isinstance(call, ast.Name):
                name = imports[module].get(call.id, f"{module}:{call.id}")
                if name in functions:
                    todo.append(name)
            # api.<method>, called or handed on (e.g. to a pool of workers)
            elif isinstance(call, ast.Attribute) and call.attr in api_ops:
                owner = call.value
                if (isinstance(owner, ast.Name) and owner.id == "api") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "api"
                ):
                    found |= api_ops[call.attr]
    return found


def test_every_aws_operation_has_an_iam_action() -> None:
    every = set().union(*_api_operations().values())
    assert every == set(IAM_ACTIONS), "daemon/aws/errors.py IAM_ACTIONS and AwsApi disagree"
    assert every >= MUTATING_OPERATIONS


@dataclass(frozen=True)
class Request:
    """One authorization AWS makes: an IAM action on a resource, with its condition context."""

    operation: str
    action: str
    resource: str
    context: Mapping[str, str | list[str]]


def _key_request(
    emu: Emulator,
    operation: str,
    action: str,
    key: str,
    request_tags: Mapping[str, str] | None = None,
    request_alias: str | None = None,
) -> Request:
    meta = emu.backend.describe_key(key)
    context: dict[str, str | list[str]] = {
        f"aws:ResourceTag/{k}": v for k, v in emu.tags(meta.arn).items()
    }
    context["kms:ResourceAliases"] = sorted(meta.aliases)
    # The key's own properties, as KMS puts them in every request's context.
    context["kms:KeyUsage"] = str(meta.key_usage)
    context["kms:KeySpec"] = str(meta.key_spec)
    context["kms:MultiRegion"] = "true" if meta.multi_region else "false"
    if request_tags is not None:
        context.update({f"aws:RequestTag/{k}": v for k, v in request_tags.items()})
        context["aws:TagKeys"] = sorted(request_tags)
    if request_alias is not None:
        context["kms:RequestAlias"] = request_alias
    return Request(operation, action, meta.arn, context)


def authorizations(emu: Emulator, operation: str, params: Mapping[str, Any]) -> list[Request]:
    """What AWS authorizes for one call, in the emulator's state just before it."""
    if operation in ("GetResources", "ListAliases", "TagResources"):
        found = [Request(operation, IAM_ACTIONS[operation], "*", {})]
        if operation == "TagResources":
            # The tagging API tags each key with the caller's own kms:TagResource permission.
            found += [
                _key_request(emu, operation, "kms:TagResource", arn, params["Tags"])
                for arn in params["ResourceARNList"]
            ]
        return found
    if operation == "DescribeKey":
        key = str(params["KeyId"])
        if key.startswith("alias/"):
            target = emu.alias_target(key)
            if target is None:
                return []  # NotFound: there is no key to authorize against
            return [_key_request(emu, operation, "kms:DescribeKey", target, request_alias=key)]
        return [_key_request(emu, operation, "kms:DescribeKey", key)]
    if operation == "TagResource":
        tags = {t["TagKey"]: t["TagValue"] for t in params["Tags"]}
        return [_key_request(emu, operation, "kms:TagResource", params["KeyId"], tags)]
    if operation == "UpdateAlias":
        alias_arn = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:{params['AliasName']}"
        current = emu.alias_target(params["AliasName"])
        assert current is not None
        return [
            Request(operation, "kms:UpdateAlias", alias_arn, {}),
            _key_request(emu, operation, "kms:UpdateAlias", current),
            _key_request(emu, operation, "kms:UpdateAlias", params["TargetKeyId"]),
        ]
    if operation == "ScheduleKeyDeletion":
        return [_key_request(emu, operation, "kms:ScheduleKeyDeletion", params["KeyId"])]
    if operation == "ListResourceTags":
        return [_key_request(emu, operation, "kms:ListResourceTags", params["KeyId"])]
    raise AssertionError(f"no authorization model for {operation}: extend authorizations()")


# A deliberately small IAM evaluator for the condition operators the policies use. Anything else
# fails loudly, so a policy edit cannot slip past this test unevaluated.
def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Any]) -> bool:
    wanted = _as_list(expected)
    actual = context.get(key)
    if operator == "StringEquals":
        return actual is not None and all(a in wanted for a in _as_list(actual))
    if operator == "StringEqualsIfExists":
        return actual is None or all(a in wanted for a in _as_list(actual))
    if operator == "StringLike":
        return actual is not None and all(
            any(fnmatch.fnmatchcase(a, w) for w in wanted) for a in _as_list(actual)
        )
    if operator == "ForAllValues:StringEquals":
        return all(a in wanted for a in _as_list(actual))
    if operator == "ForAnyValue:StringLike":
        return any(fnmatch.fnmatchcase(a, w) for a in _as_list(actual) for w in wanted)
    if operator == "ArnEquals":
        return actual is not None and all(a in wanted for a in _as_list(actual))
    if operator == "Bool":
        return actual is not None and all(a.lower() in wanted for a in _as_list(actual))
    raise AssertionError(f"the test's IAM evaluator does not know {operator}: extend it")


def allowed(policy: Mapping[str, Any], request: Request) -> bool:
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow", "the policies only allow"
        if request.action not in _as_list(statement["Action"]):
            continue
        resources = [
            r.replace("${aws:PrincipalAccount}", ACCOUNT_ID)
            for r in _as_list(statement["Resource"])
        ]
        if not any(fnmatch.fnmatchcase(request.resource, r) for r in resources):
            continue
        conditions = statement.get("Condition", {})
        if all(
            _condition_holds(operator, key, expected, request.context)
            for operator, block in conditions.items()
            for key, expected in block.items()
        ):
            return True
    return False


def load_policy(name: str) -> dict[str, Any]:
    policy = json.loads((IAM / name).read_text(encoding="utf-8"))
    assert policy["Version"] == "2012-10-17"
    return dict(policy)


def granted_actions(policy: Mapping[str, Any]) -> set[str]:
    return {a for s in policy["Statement"] for a in _as_list(s["Action"])}


@dataclass
class Recorded:
    """Every AWS call a job made, with what AWS would authorize for it."""

    operations: dict[Job, set[str]] = field(default_factory=lambda: {j: set() for j in Job})
    requests: dict[Job, list[Request]] = field(default_factory=lambda: {j: [] for j in Job})


def _seed(emu: Emulator, now: datetime) -> None:
    def ts(delta: timedelta) -> int:
        return int((now - delta).timestamp())

    old, day = now - timedelta(days=90), timedelta(days=1)
    # This server: a legacy alias-managed key (migrated), a tagged key behind its alias and a
    # tagged key without one (both stamped; the first alias refreshed).
    emu.spire_key(TD, SERVER, "x509-CA-A", last_update=None, tagged=False, created_at=old)
    emu.spire_key(TD, SERVER, "JWT-Signer-A", last_update=ts(3 * day), created_at=old)
    emu.spire_key(
        TD, SERVER, "bundle-acme-foo.bar+rsa", last_update=ts(3 * day), alias=False, created_at=old
    )
    # A dead peer (reclaimed), a live one, another trust domain's dead key and other teams' keys.
    for key_id in ("x509-CA-A", "JWT-Signer-A"):
        emu.spire_key(TD, PEER, key_id, last_update=ts(20 * day), alias=False, created_at=old)
    for key_id in ("x509-CA-A", "x509-CA-B", "JWT-Signer-A"):
        emu.spire_key(TD, LIVE_PEER, key_id, last_update=ts(day), created_at=old)
    emu.spire_key(
        OTHER_TD, PEER, "x509-CA-A", last_update=ts(60 * day), alias=False, created_at=old
    )
    emu.foreign_keys(20, aliases_every=4)


@pytest.fixture
async def recorded(aws: Emulator) -> Recorded:
    """Run refresh then reclaim against the emulator and record every call and authorization."""
    _seed(aws, datetime.now(UTC))
    settings = load_settings(
        None,
        env={
            "SPIRE_KMS_RECONCILER_TRUST_DOMAIN": TD,
            "SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_VALUE": SERVER,
            "SPIRE_KMS_RECONCILER_ASSUME_SPIRE_ALIVE": "true",
            "SPIRE_KMS_RECONCILER_RECLAIM__MAX_RECLAIM_FRACTION": "1",
        },
    )
    result = Recorded()
    async with open_aws(AwsOptions(region=REGION, mutating_calls_per_second=50)) as api:
        job = Job.REFRESH
        original = api._call

        async def spy(client: Any, operation: str, **params: Any) -> dict[str, Any]:
            result.operations[job].add(operation)
            result.requests[job] += authorizations(aws, operation, params)
            return await original(client, operation, **params)

        api._call = spy  # type: ignore[method-assign]
        ctx = Context(settings, SERVER, api)
        refresh = await refresh_once(ctx)
        job = Job.RECLAIM
        reclaim = await reclaim_once(ctx)
    assert refresh.outcome is Outcome.SUCCESS, refresh.error
    assert reclaim.outcome is Outcome.SUCCESS, reclaim.error
    kinds = {r.action.kind.value for r in (*refresh.results, *reclaim.results)}
    assert kinds == {"migrate", "stamp", "refresh_alias", "mark_inactive", "schedule_deletion"}
    return result


@pytest.mark.integration
async def test_the_scenario_exercises_every_operation_the_jobs_can_make(recorded: Recorded) -> None:
    # Statically, both jobs reach the executor and so every operation; the scenario must make
    # each of them, so that the per-job sets below are complete.
    static = _reachable_operations("jobs/refresh:refresh_once") | _reachable_operations(
        "jobs/reclaim:reclaim_once"
    )
    assert static == set(IAM_ACTIONS)
    made = recorded.operations[Job.REFRESH] | recorded.operations[Job.RECLAIM]
    assert made == static


@pytest.mark.integration
async def test_policies_grant_exactly_the_actions_of_their_jobs(recorded: Recorded) -> None:
    refresh = {IAM_ACTIONS[op] for op in recorded.operations[Job.REFRESH]}
    reclaim = {IAM_ACTIONS[op] for op in recorded.operations[Job.RECLAIM]}
    assert "kms:ScheduleKeyDeletion" in reclaim and "kms:ScheduleKeyDeletion" not in refresh
    both = load_policy("refresh-and-reclaim.json")
    refresh_only = load_policy("refresh-only.json")
    assert granted_actions(both) == refresh | reclaim
    assert granted_actions(refresh_only) == refresh
    assert "kms:ScheduleKeyDeletion" not in granted_actions(refresh_only)


@pytest.mark.integration
async def test_policies_allow_every_call_the_jobs_made(recorded: Recorded) -> None:
    both = load_policy("refresh-and-reclaim.json")
    refresh_only = load_policy("refresh-only.json")
    for request in recorded.requests[Job.REFRESH]:
        assert allowed(both, request), request
        assert allowed(refresh_only, request), request
    for request in recorded.requests[Job.RECLAIM]:
        assert allowed(both, request), request
    # The refresh-only role can neither schedule a deletion nor mark a key inactive.
    reclaim_writes = [
        r for r in recorded.requests[Job.RECLAIM] if r.operation in MUTATING_OPERATIONS
    ]
    assert {r.operation for r in reclaim_writes} == {"TagResources", "ScheduleKeyDeletion"}
    # Every key write names a key shaped like SPIRE's.
    for request in reclaim_writes:
        if request.resource != "*":
            assert request.context["kms:KeyUsage"] == "SIGN_VERIFY", request
    # tag:TagResources itself is the refresh's too (stamps); what the refresh-only role lacks is
    # kms:TagResource writing spire-active=false on each key, and kms:ScheduleKeyDeletion.
    key_writes = [r for r in reclaim_writes if r.action != "tag:TagResources"]
    assert {r.action for r in key_writes} == {"kms:TagResource", "kms:ScheduleKeyDeletion"}
    for request in key_writes:
        assert not allowed(refresh_only, request), request


#: The request context of a key shaped like SPIRE's.
SPIRE_SHAPE = {
    "kms:KeyUsage": "SIGN_VERIFY",
    "kms:KeySpec": "ECC_NIST_P256",
    "kms:MultiRegion": "false",
}


def _key_arn(n: int) -> str:
    return f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/0000000{n}-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("what", "request_"),
    [
        (
            "another trust domain's key",
            Request(
                "ScheduleKeyDeletion",
                "kms:ScheduleKeyDeletion",
                _key_arn(1),
                {"aws:ResourceTag/spire-server-td": OTHER_TD},
            ),
        ),
        (
            "an untagged key",
            Request("ScheduleKeyDeletion", "kms:ScheduleKeyDeletion", _key_arn(1), {}),
        ),
        (
            "deleting a symmetric data key that carries SPIRE's tags",
            Request(
                "ScheduleKeyDeletion",
                "kms:ScheduleKeyDeletion",
                _key_arn(1),
                {
                    **SPIRE_SHAPE,
                    "kms:KeyUsage": "ENCRYPT_DECRYPT",
                    "kms:KeySpec": "SYMMETRIC_DEFAULT",
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:ResourceTag/spire-active": "false",
                },
            ),
        ),
        (
            "deleting a multi-Region key",
            Request(
                "ScheduleKeyDeletion",
                "kms:ScheduleKeyDeletion",
                _key_arn(1),
                {
                    **SPIRE_SHAPE,
                    "kms:MultiRegion": "true",
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:ResourceTag/spire-active": "false",
                },
            ),
        ),
        (
            "marking a key of another key spec inactive",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(1),
                {
                    **SPIRE_SHAPE,
                    "kms:KeySpec": "HMAC_256",
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:RequestTag/spire-active": "false",
                    "aws:TagKeys": ["spire-active"],
                },
            ),
        ),
        (
            "reading another trust domain's tags",
            Request(
                "ListResourceTags",
                "kms:ListResourceTags",
                _key_arn(1),
                {"aws:ResourceTag/spire-server-td": OTHER_TD},
            ),
        ),
        (
            "describing an unrelated key",
            Request("DescribeKey", "kms:DescribeKey", _key_arn(2), {"kms:ResourceAliases": []}),
        ),
        (
            "describing through another trust domain's alias",
            Request(
                "DescribeKey",
                "kms:DescribeKey",
                _key_arn(2),
                {"kms:RequestAlias": "alias/SPIRE_SERVER/other_example_org/s/x509-CA-A"},
            ),
        ),
        (
            "retagging a key into another trust domain",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(3),
                {
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:RequestTag/spire-server-td": OTHER_TD,
                    "aws:TagKeys": ["spire-server-td"],
                },
            ),
        ),
        (
            "re-activating a reclaimed key",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(3),
                {
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:RequestTag/spire-active": "true",
                    "aws:TagKeys": ["spire-active"],
                },
            ),
        ),
        (
            "writing a tag that is not SPIRE's",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(3),
                {
                    "aws:ResourceTag/spire-server-td": TD,
                    "aws:RequestTag/team": "x",
                    "aws:TagKeys": ["team"],
                },
            ),
        ),
        (
            "migrating a key without a SPIRE alias of this trust domain",
            Request(
                "TagResource",
                "kms:TagResource",
                _key_arn(4),
                {
                    "kms:ResourceAliases": ["alias/team-1"],
                    "aws:RequestTag/spire-server-td": TD,
                    "aws:RequestTag/spire-active": "true",
                    "aws:TagKeys": list(spire.SPIRE_TAGS),
                },
            ),
        ),
        (
            "updating another trust domain's alias",
            Request(
                "UpdateAlias",
                "kms:UpdateAlias",
                f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:alias/SPIRE_SERVER/example_org2/s/x",
                {},
            ),
        ),
        (
            "pointing a SPIRE alias at an unrelated key",
            Request(
                "UpdateAlias",
                "kms:UpdateAlias",
                _key_arn(5),
                {"kms:ResourceAliases": ["alias/team-1"]},
            ),
        ),
        (
            "a key in another account",
            Request(
                "DescribeKey",
                "kms:DescribeKey",
                f"arn:aws:kms:{REGION}:999999999999:key/1",
                {"aws:ResourceTag/spire-server-td": TD},
            ),
        ),
    ],
)
def test_policies_deny(what: str, request_: Request) -> None:
    for name in ("refresh-and-reclaim.json", "refresh-only.json"):
        assert not allowed(load_policy(name), request_), f"{name} allows {what}"


def test_policies_are_scoped_to_the_trust_domain() -> None:
    sanitized = spire.sanitize_trust_domain(TD)
    alias_pattern = f"{spire.trust_domain_alias_prefix(TD)}*"
    for name in ("refresh-and-reclaim.json", "refresh-only.json"):
        for statement in load_policy(name)["Statement"]:
            assert re.fullmatch(r"[A-Za-z0-9]+", statement["Sid"]), statement["Sid"]
            actions = _as_list(statement["Action"])
            assert all("*" not in a for a in actions)
            resources = _as_list(statement["Resource"])
            if resources == ["*"]:
                # Only actions without resource-level permissions get Resource "*".
                assert set(actions) <= {"tag:GetResources", "tag:TagResources", "kms:ListAliases"}
                continue
            text = json.dumps(statement)
            if any(":alias/" in r for r in resources):
                assert resources == [
                    f"arn:aws:kms:*:${{aws:PrincipalAccount}}:alias/SPIRE_SERVER/{sanitized}/*"
                ]
            else:
                assert resources == ["arn:aws:kms:*:${aws:PrincipalAccount}:key/*"]
                assert f'"{TD}"' in text or f'"{alias_pattern}"' in text, statement["Sid"]


def test_key_policy_delegates_only_key_actions_the_daemon_needs() -> None:
    policy = load_policy("spire-key-policy.json")
    sids = [s["Sid"] for s in policy["Statement"]]
    # SPIRE's own default statements come first, unchanged in meaning.
    assert sids[:2] == [
        "Allow full access to the SPIRE Server role",
        "Allow KMS console to display the key and policy",
    ]
    (delegation,) = policy["Statement"][2:]
    both = granted_actions(load_policy("refresh-and-reclaim.json"))
    key_actions = {a for a in both if a.startswith("kms:") and a != "kms:ListAliases"}
    assert set(_as_list(delegation["Action"])) == key_actions
    assert delegation["Condition"]["ArnEquals"]["aws:PrincipalArn"].endswith(
        ":role/spire-kms-reconciler"
    )
