"""The monitoring stack's manifests (deploy/k8s/monitoring): valid objects, the `restricted` Pod
Security profile, configuration that is deploy/monitoring's own files byte for byte, and the
addresses the rest of the platform uses (the canary analysis, the services' OTLP exporter,
Prometheus' Alertmanager discovery, Grafana's datasource) answered by a Service here.

The PrometheusRule objects for a cluster running the Prometheus Operator (deploy/monitoring/operator)
are the rule files, generated, current and valid.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers.k8s import K8S_CRD_SCHEMAS, of, pod_labels, pod_templates, restricted_violations
from tests.helpers.monitoring import DASHBOARDS, MONITORING, PROMETHEUS, RULE_FILES, run

KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
OPERATOR = MONITORING / "operator"


@pytest.fixture(scope="module")
def stack(k8s_render) -> list[dict]:
    return k8s_render("monitoring")


def config_map(objects: list[dict], prefix: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].rsplit("-", 1)[0] == prefix]
    return found


def service_port(objects: list[dict], name: str) -> set[int]:
    return {p["port"] for p in of(objects, "Service", name)["spec"]["ports"]}


def test_every_object_lives_in_monitoring_and_validates(stack):
    import kubernetes_validate

    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    assert {o["metadata"].get("namespace") for o in stack if o["kind"] not in cluster_scoped} == {"monitoring"}
    for version in KUBERNETES_VERSIONS:
        for obj in stack:
            kubernetes_validate.validate(obj, version, strict=True)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in stack}
    assert {("StatefulSet", "prometheus"), ("StatefulSet", "alertmanager"), ("Deployment", "grafana"),
            ("Deployment", "otel-collector"), ("Deployment", "jaeger"), ("Deployment", "pushgateway")} <= kinds


def test_every_pod_meets_the_restricted_profile_its_namespace_enforces(stack):
    pods = pod_templates(stack)
    assert len(pods) == 6
    assert {what: problems for what, spec in pods if (problems := restricted_violations(spec))} == {}


def test_configuration_is_the_repositorys_files_byte_for_byte(stack):
    assert config_map(stack, "prometheus-config")["data"] == {"prometheus.yml": (PROMETHEUS / "prometheus.yml").read_text()}
    assert config_map(stack, "prometheus-rules")["data"] == {p.name: p.read_text() for p in RULE_FILES}
    assert config_map(stack, "alertmanager-config")["data"] == {
        "alertmanager.yml": (MONITORING / "alertmanager/alertmanager.yml").read_text()}
    assert config_map(stack, "grafana-dashboards")["data"] == {p.name: p.read_text() for p in DASHBOARDS}
    assert config_map(stack, "otel-collector-config")["data"] == {
        "config.yaml": (MONITORING / "otel-collector/config.yaml").read_text()}


def test_prometheus_finds_its_rules_beside_its_config(stack):
    """prometheus.yml says `rule_files: [rules/*.yml]`, relative to itself: the one projected volume
    puts every rule file there (no mount inside a read-only one)."""
    prometheus = of(stack, "StatefulSet", "prometheus")
    (container,) = prometheus["spec"]["template"]["spec"]["containers"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in container["args"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == "/etc/prometheus"
    (volume,) = [v for v in prometheus["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    rules = next(s["configMap"] for s in volume["projected"]["sources"] if "items" in s["configMap"])
    assert rules["name"] == config_map(stack, "prometheus-rules")["metadata"]["name"]
    assert {(i["key"], i["path"]) for i in rules["items"]} == {(p.name, f"rules/{p.name}") for p in RULE_FILES}
    assert yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["rule_files"] == ["rules/*.yml"]


def test_the_addresses_the_platform_uses_are_served_here(stack, k8s_render):
    # The canary analysis and Grafana's datasource: prometheus:9090.
    assert service_port(stack, "prometheus") == {9090}
    grafana = of(stack, "Deployment", "grafana")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "PROMETHEUS_URL", "value": "http://prometheus:9090"} in grafana["env"]
    # The services' OTLP exporter (prog-config) and the collector's pods the NetworkPolicy admits.
    config = {k: v for o in k8s_render("overlays/production") if o["kind"] == "ConfigMap"
              for k, v in o.get("data", {}).items()}
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring.svc:4318"
    assert 4318 in service_port(stack, "otel-collector")
    assert pod_labels(of(stack, "Deployment", "otel-collector"))["app.kubernetes.io/name"] == "otel-collector"
    # The collector's trace exporter reaches Jaeger's OTLP port.
    otel = yaml.safe_load((MONITORING / "otel-collector/config.yaml").read_text())
    host, port = otel["exporters"]["otlp/jaeger"]["endpoint"].split(":")
    assert int(port) in service_port(stack, host)
    # Prometheus discovers Alertmanager's pods by their app name and port 9093.
    alertmanager = of(stack, "StatefulSet", "alertmanager")
    assert pod_labels(alertmanager)["app.kubernetes.io/name"] == "alertmanager"
    assert [p["containerPort"] for p in alertmanager["spec"]["template"]["spec"]["containers"][0]["ports"]] == [9093]
    # The backups push to pushgateway.monitoring.svc:9091; prometheus.yml's `pushgateway` job keeps
    # pods of that app name on port 9091.
    assert service_port(stack, "pushgateway") == {9091}
    assert pod_labels(of(stack, "Deployment", "pushgateway"))["app.kubernetes.io/name"] == "pushgateway"
    # The services let pods labelled prometheus in this namespace scrape them.
    assert pod_labels(of(stack, "StatefulSet", "prometheus"))["app.kubernetes.io/name"] == "prometheus"


def test_every_rule_file_and_dashboard_is_listed_in_the_generator():
    listed = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())["configMapGenerator"]
    files = {name: gen["files"] for gen in listed for name in [gen["name"]]}
    assert sorted(files["prometheus-rules"]) == [f"prometheus/rules/{p.name}" for p in RULE_FILES]
    assert sorted(files["grafana-dashboards"]) == [f"grafana/dashboards/{p.name}" for p in DASHBOARDS]


# --- the Prometheus Operator's PrometheusRule objects ----------------------------------------

def operator_rules() -> list[dict]:
    return [doc for doc in yaml.safe_load_all((OPERATOR / "prometheus-rules.yaml").read_text()) if doc]


def test_prometheus_rules_are_generated_from_the_current_rule_files():
    done = subprocess.run([sys.executable, "-c", "import generate, sys; sys.stdout.write(generate.render())"],
                          cwd=OPERATOR, capture_output=True, text=True, check=True)
    assert (OPERATOR / "prometheus-rules.yaml").read_text() == done.stdout, (
        "deploy/monitoring/operator/prometheus-rules.yaml is stale: run python deploy/monitoring/operator/generate.py")


def test_each_prometheus_rule_is_its_rule_file_exactly():
    by_name = {rule["metadata"]["name"]: rule for rule in operator_rules()}
    assert set(by_name) == {f"prognetwork-{p.stem}" for p in RULE_FILES}
    for path in RULE_FILES:
        rule = by_name[f"prognetwork-{path.stem}"]
        assert rule["spec"] == {"groups": yaml.safe_load(path.read_text())["groups"]}, path.name
        assert rule["metadata"]["labels"]["prometheus"] == "prognetwork"


def test_prometheus_rules_validate_and_load(monitoring_tools, k8s_render, tmp_path):
    import jsonschema

    schema_path = K8S_CRD_SCHEMAS / "monitoring.coreos.com" / "prometheusrule_v1.json"
    if not schema_path.is_file():
        pytest.skip(f"no published PrometheusRule schema at {schema_path}")
    schema = json.loads(schema_path.read_text())
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    rendered = k8s_render("../monitoring/operator")
    assert {r["metadata"]["namespace"] for r in rendered} == {"monitoring"}
    for rule in rendered:
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(rule)]
        assert errors == [], rule["metadata"]["name"]
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump(rule["spec"]))
        result = run("promtool", "check", "rules", path)
        assert result.returncode == 0, result.stdout + result.stderr
