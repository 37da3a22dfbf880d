"""The Prometheus alerts and scrape configuration (promtool) and the Grafana dashboard."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from daemon.metrics import Metrics
from daemon.model import Anomaly, Job
from tests.deploy_common import (
    ALERTS,
    ALERTS_TEST,
    DASHBOARD,
    PROMTOOL,
    ROOT,
    SCRAPE,
    _anchor,
    needs_promtool,
    run,
)

# --- Prometheus and Grafana -----------------------------------------------------------------------


def _sample_names() -> set[str]:
    """Every series name the daemon exports (``_total``, ``_bucket``... included)."""
    names: set[str] = set()
    metrics = Metrics()
    metrics.set_intervals({Job.REFRESH: 21600.0, Job.RECLAIM: 172800.0})  # as `run` exports them
    for family in metrics.registry.collect():
        names |= {sample.name for sample in family.samples}
    return names


_METRIC = re.compile(r"\bspire_kms_reconciler_[a-z_]+\b")


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alerts_reference_exported_metrics_and_have_runbooks() -> None:
    names = _sample_names()
    rules = _alert_rules()
    assert {r["alert"] for r in rules} >= {
        "SpireKmsReconcilerTargetDown",
        "SpireKmsReconcilerStoppedReporting",
        "SpireKmsReconcilerSpireNotAlive",
        "SpireKmsReconcilerNoServingKeys",
        "SpireKmsReconcilerRefreshNotSucceeding",
        "SpireKmsReconcilerReclaimFailing",
        "SpireKmsReconcilerPermissionDenied",
        "SpireKmsReconcilerReclaimRefused",
        "SpireKmsReconcilerMalformedKeyTags",
    }
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", operations, re.MULTILINE)}
    for rule in rules:
        used = _METRIC.findall(rule["expr"])
        assert used or 'up{job="spire-kms-reconciler"}' in rule["expr"], rule["alert"]
        assert set(used) <= names, (rule["alert"], set(used) - names)
        assert rule["labels"]["severity"] in ("warning", "critical")
        runbook = rule["annotations"]["runbook"]
        anchor = runbook.split()[0].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no #{anchor}"


def test_alerts_are_per_instance_and_use_each_daemons_own_interval() -> None:
    exprs = {r["alert"]: " ".join(r["expr"].split()) for r in _alert_rules()}
    assert exprs["SpireKmsReconcilerTargetDown"] == 'up{job="spire-kms-reconciler"} == 0'
    refresh = exprs["SpireKmsReconcilerRefreshNotSucceeding"]
    assert 'spire_kms_reconciler_interval_seconds{task="refresh"}' in refresh
    assert "3600" not in refresh  # no hard-coded interval
    assert exprs["SpireKmsReconcilerPermissionDenied"] == (
        "spire_kms_reconciler_permission_denied == 1"
    )
    assert exprs["SpireKmsReconcilerReclaimRefused"] == (
        "increase(spire_kms_reconciler_reclaim_refused_total[1h]) > 0"
    )
    for name, expr in exprs.items():
        assert 'job="refresh"' not in expr and 'job="reclaim"' not in expr, name
        if " on (" in expr:  # binary operations match per instance
            assert "instance" in expr, name
    malformed = exprs["SpireKmsReconcilerMalformedKeyTags"]
    pattern = re.search(r'anomaly=~"([^"]+)"', malformed)
    assert pattern
    matched = {a.value for a in Anomaly if re.fullmatch(pattern[1], a.value)}
    assert {"malformed_last_update", "malformed_active", "future_last_update"} <= matched
    assert "superseded" not in matched and "not_enabled" not in matched


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    result = run(PROMTOOL, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    assert PROMTOOL is not None
    result = run(PROMTOOL, "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_check_scrape_config() -> None:
    assert PROMTOOL is not None
    result = run(PROMTOOL, "check", "config", str(SCRAPE))
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))["scrape_configs"]
    assert job["job_name"] == "spire-kms-reconciler"  # what the alerts select on
    assert "honor_labels" not in job  # the daemon's task label needs no special treatment


def _panel_exprs(panels: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for panel in panels:
        found += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
        found += _panel_exprs(panel.get("panels", []))
    return found


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names = _sample_names()
    exprs = _panel_exprs(dashboard["panels"])
    assert exprs
    used: set[str] = set()
    for title, expr in exprs:
        metrics = set(_METRIC.findall(expr))
        assert metrics or 'up{job="spire-kms-reconciler"' in expr, f"{title}: {expr}"
        assert metrics <= names, (title, metrics - names)
        used |= metrics
    for variable in dashboard["templating"]["list"]:
        assert set(_METRIC.findall(json.dumps(variable))) <= names
    # Runs, durations, actions, key states, AWS calls and throttles all have a panel.
    for needed in (
        "spire_kms_reconciler_runs_total",
        "spire_kms_reconciler_run_duration_seconds_bucket",
        "spire_kms_reconciler_actions_total",
        "spire_kms_reconciler_keys",
        "spire_kms_reconciler_aws_requests_total",
        "spire_kms_reconciler_last_success_timestamp_seconds",
        "spire_kms_reconciler_interval_seconds",
        "spire_kms_reconciler_spire_up",
    ):
        assert needed in used, needed
    for _, expr in exprs:  # the daemon's label is task; Prometheus's job is the scrape job
        assert "by (job" not in expr and "{{job}}" not in expr, expr
    assert any('outcome="throttled"' in expr for _, expr in exprs)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
