"""deploy/kubernetes: rendered with kustomize, every object checked against its schema.

The Component is applied to a SPIRE server shaped as spiffe/helm-charts-hardened renders it
(deploy/kubernetes/example), rendered with kustomize (built from the Go module proxy), and
each object is validated: built-in kinds against the Kubernetes strict JSON schemas of
kubernetes-validate, ServiceMonitor and PrometheusRule against the Prometheus Operator's own CRD
schemas. Skipped with the reason only when go or the module proxy is not there.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.settings import load_settings
from devtools import k8s

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _rendered() -> list[dict[str, Any]]:
    return k8s.render()


@pytest.fixture
def objects() -> list[dict[str, Any]]:
    try:
        return _rendered()
    except k8s.NoTool as exc:
        pytest.skip(f"kustomize cannot be built here: {exc}")


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, [f"{o['kind']}/{o['metadata']['name']}" for o in objects]
    return found[0]


def _sidecar(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = _one(objects, "StatefulSet", "spire-server")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert sorted(containers) == ["spire-kms-reconciler", "spire-server"]
    return dict(containers["spire-kms-reconciler"])


def test_every_object_is_valid(objects: list[dict[str, Any]]) -> None:
    try:
        results = list(k8s.validate(objects))
    except k8s.NoTool as exc:
        pytest.skip(f"the Prometheus Operator CRDs cannot be fetched here: {exc}")
    problems = [(name, problem) for name, problem in results if problem]
    assert not problems
    kinds = sorted(name.split("/")[0] for name, _ in results)
    assert kinds == [
        "ConfigMap",
        "ConfigMap",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "StatefulSet",
    ]


def test_an_invalid_object_is_caught(objects: list[dict[str, Any]]) -> None:
    """The validation can fail: a misspelt field and a wrong type are reported."""
    broken = yaml.safe_load(yaml.safe_dump(_one(objects, "StatefulSet", "spire-server")))
    containers = broken["spec"]["template"]["spec"]["containers"]
    sidecar = next(c for c in containers if c["name"] == "spire-kms-reconciler")
    sidecar["securityContext"]["readOnlyRootFilesytem"] = True
    monitor = yaml.safe_load(
        yaml.safe_dump(_one(objects, "ServiceMonitor", "spire-kms-reconciler"))
    )
    monitor["spec"]["endpoints"] = "reconciler-metrics"
    try:
        results = dict(k8s.validate([broken, monitor]))
    except k8s.NoTool as exc:
        pytest.skip(f"the Prometheus Operator CRDs cannot be fetched here: {exc}")
    assert results["StatefulSet/spire-server"] is not None
    assert results["ServiceMonitor/spire-kms-reconciler"] is not None


def test_the_sidecar_is_locked_down(objects: list[dict[str, Any]]) -> None:
    sidecar = _sidecar(objects)
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # Memory from the measured peak (73.5 MB) with the unit's MemoryMax as the limit.
    assert sidecar["resources"]["limits"]["memory"] == "256Mi"
    assert sidecar["resources"]["requests"]["memory"] == "96Mi"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert sidecar[probe]["httpGet"] == {"path": "/livez", "port": "reconciler-metrics"}
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert all(m.get("readOnly") is True for m in mounts.values())
    assert mounts["spire-data"]["mountPath"] == "/run/spire/data"  # the key identifier file
    assert mounts["spire-config"]["mountPath"] == "/run/spire/config"  # SPIRE's server.conf


def test_metrics_are_scraped_as_the_alerts_expect(objects: list[dict[str, Any]]) -> None:
    service = _one(objects, "Service", "spire-kms-reconciler")
    monitor = _one(objects, "ServiceMonitor", "spire-kms-reconciler")
    pod = _one(objects, "StatefulSet", "spire-server")["spec"]["template"]["metadata"]
    # The Service selects the SPIRE server pods, and its port is the sidecar's.
    assert service["spec"]["selector"].items() <= pod["labels"].items()
    ports = {p["name"] for p in _sidecar(objects)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    # The alerts select job="spire-kms-reconciler": the ServiceMonitor's job label says so.
    label = monitor["spec"]["jobLabel"]
    assert service["metadata"]["labels"][label] == "spire-kms-reconciler"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_prometheus_rule_equals_the_alerts_file(objects: list[dict[str, Any]]) -> None:
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rule = _one(objects, "PrometheusRule", "spire-kms-reconciler")
    assert rule["spec"]["groups"] == alerts["groups"]
    assert rule == k8s.prometheus_rule(alerts), "run python -m devtools.k8s --write-rule"


def test_the_sidecar_settings_read_spire_s_server_conf(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The ConfigMap's config.toml with the chart-shaped server.conf gives the daemon SPIRE's
    trust domain, region, key identifier file and health listener."""
    config = _one(objects, "ConfigMap", "spire-kms-reconciler")["data"]["config.toml"]
    server_conf = _one(objects, "ConfigMap", "spire-server")["data"]["server.conf"]
    (tmp_path / "server.conf").write_text(server_conf)
    path = tmp_path / "config.toml"
    path.write_text(config.replace("/run/spire/config/server.conf", str(tmp_path / "server.conf")))
    env = {
        name: value["value"]
        for value in _sidecar(objects)["env"]
        if (name := value["name"]).startswith("SPIRE_KMS_RECONCILER_")
    }
    settings = load_settings(path, env=env)
    assert settings.trust_domain == "example.org"
    assert settings.region == "us-east-1"
    assert str(settings.key_identifier_file) == "/run/spire/data/aws-kms-key-id"
    assert settings.spire_health_url == "http://127.0.0.1:8080/live"
    assert settings.metrics.listen_address == "0.0.0.0:9464"
