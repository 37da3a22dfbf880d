"""deploy/kubernetes rendered and checked: kustomize from the Go module proxy, the Kubernetes
schemas from kubernetes-validate, the Prometheus Operator's CRD schemas from its Go module.

    python -m devtools.k8s               # render deploy/kubernetes/example, validate, summarise
    python -m devtools.k8s --write-rule  # regenerate prometheusrule.yaml from alerts.yml

Binaries and modules are cached under ``.cache/`` by version; ``go`` builds them when absent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from devtools.gotool import go

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE = DEPLOY / "sidecar" / "prometheusrule.yaml"
KUSTOMIZE_VERSION = "v5.7.1"  # the newest the proxy serves that builds with Go 1.26
OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
OPERATOR_VERSION = "v0.85.0"
KUBERNETES_VERSION = "1.33.0"  # the schemas the objects are checked against
CACHE = ROOT / ".cache"


class NoTool(Exception):
    """kustomize or the CRD schemas cannot be had here (no go, no module proxy)."""


def kustomize() -> Path:
    """The kustomize binary, built with ``go install`` when absent."""
    target = CACHE / "kustomize" / KUSTOMIZE_VERSION / "kustomize"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    done = go(
        "install",
        f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}",
        env={"GOBIN": str(target.parent)},
        timeout=1200,
    )
    if done is None:
        raise NoTool("go is not on PATH")
    if done.returncode != 0 or not target.exists():
        raise NoTool(f"kustomize {KUSTOMIZE_VERSION} does not build: {done.stderr[-1500:]}")
    return target


def crd_schemas() -> dict[str, dict[str, Any]]:
    """``kind`` -> the openAPIV3Schema of the Prometheus Operator CRDs the manifests use."""
    done = go("mod", "download", "-json", f"{OPERATOR_MODULE}@{OPERATOR_VERSION}", timeout=600)
    if done is None:
        raise NoTool("go is not on PATH")
    try:
        folder = Path(json.loads(done.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    except (ValueError, KeyError):
        raise NoTool(f"{OPERATOR_MODULE}@{OPERATOR_VERSION}: {done.stdout[-800:]}") from None
    schemas = {}
    for name in ("servicemonitors", "prometheusrules"):
        crd = yaml.safe_load((folder / f"monitoring.coreos.com_{name}.yaml").read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


def render(folder: Path = DEPLOY / "example") -> list[dict[str, Any]]:
    """``kustomize build`` of ``folder``, as a list of objects."""
    done = subprocess.run(
        [str(kustomize()), "build", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kustomize build {folder} failed: {done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def validate(objects: list[dict[str, Any]]) -> Iterator[tuple[str, str | None]]:
    """(kind/name, problem or None) for each object: Kubernetes schemas (strict: no unknown
    field) for built-in kinds, the CRDs' own schemas for the Prometheus Operator's."""
    crds = crd_schemas()
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            if obj["kind"] in crds:
                # The CRDs' patterns are Go regexps (some Python's re refuses, such as "^(?i)"),
                # so the schema itself is not checked against the metaschema, only used.
                jsonschema.Draft4Validator(crds[obj["kind"]]).validate(obj)
            else:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            yield name, str(exc).splitlines()[0]
        else:
            yield name, None


def prometheus_rule(alerts: Mapping[str, Any]) -> dict[str, Any]:
    """The PrometheusRule holding exactly alerts.yml's groups."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "spire-kms-reconciler",
            "namespace": "spire-server",
            "labels": {"app.kubernetes.io/name": "spire-kms-reconciler"},
        },
        "spec": {"groups": alerts["groups"]},
    }


def write_rule() -> None:
    rule = prometheus_rule(yaml.safe_load(ALERTS.read_text(encoding="utf-8")))
    header = (
        "# Generated from deploy/prometheus/alerts.yml by `python -m devtools.k8s --write-rule`;\n"
        "# tests/test_kubernetes.py fails when the two differ. Runbooks: docs/operations.md.\n"
    )
    RULE.write_text(header + yaml.safe_dump(rule, sort_keys=False, width=100), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.k8s", description=__doc__)
    parser.add_argument("--write-rule", action="store_true")
    args = parser.parse_args(argv)
    if args.write_rule:
        write_rule()
        print(f"wrote {RULE}")
        return 0
    results = list(validate(render()))
    for name, problem in results:
        print(f"{name:<45} {'INVALID: ' + problem if problem else 'valid'}")
    invalid = sum(1 for _, problem in results if problem)
    print(
        f"Summary: {len(results)} resources found, {len(results) - invalid} valid, "
        f"{invalid} invalid (Kubernetes {KUBERNETES_VERSION} strict schemas, "
        f"Prometheus Operator {OPERATOR_VERSION} CRDs)"
    )
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
