"""The canary analysis asked of a real Prometheus, scraping pods as Kubernetes would describe them.

Fake pods (tiny HTTP servers exporting the kit's requests_total and errors_total) stand in for a
Rollout's stable and canary ReplicaSets, in production and in staging; Prometheus discovers them
with the labels Kubernetes pod discovery gives (file discovery stands in: Debian's build has none)
and relabels them either by prometheus.yml or as the Prometheus Operator would for the service's
PodMonitor. The AnalysisTemplate's exact query, with its arguments filled in as Argo Rollouts does,
fails a canary answering 5xx while its stable pods are healthy, and passes a healthy canary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from prognetwork.registry import services
from tests.helpers.k8s import K8S_DIR
from tests.helpers.monitoring import PROMETHEUS, alerts, install_monitoring_tools
from tests.helpers.polling import eventually
from tests.helpers.prometheus import (
    FakeTarget,
    Prometheus,
    Traffic,
    discovered_pod,
    podmonitor_scrape_config,
    running_prometheus,
)

pytestmark = pytest.mark.e2e
SERVICE = "api-gateway"
STABLE, CANARY, HEALTHY_CANARY = "5d8f7c9b4", "7b6c5d4f3", "6f9e8d7c2"
# Pods of one Rollout: production's stable pods (heavy traffic, healthy), its failing canary (a
# trickle, half 503), another healthy canary, and staging's canary of the very same pod template
# (so the same hash: same images and settings), healthy.
PODS = {
    "stable": ("prog-production", STABLE, Traffic(SERVICE, ok=200)),
    "canary": ("prog-production", CANARY, Traffic(SERVICE, ok=5, failed=5)),
    "healthy-canary": ("prog-production", HEALTHY_CANARY, Traffic(SERVICE, ok=10)),
    "staging-canary": ("prog-staging", CANARY, Traffic(SERVICE, ok=10)),
}


def base_objects(kind: str) -> list[dict]:
    return [doc for path in sorted((K8S_DIR / "base").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if isinstance(doc, dict) and doc.get("kind") == kind]


def analysis_template() -> dict:
    (template,) = [t for t in base_objects("AnalysisTemplate") if t["metadata"]["name"] == "error-rate"]
    return template


def rollout_args(name: str, namespace: str, canary_hash: str) -> dict[str, str]:
    """The Rollout's analysis arguments as Argo Rollouts resolves them for a canary."""
    (rollout,) = [r for r in base_objects("Rollout") if r["metadata"]["name"] == name]
    resolved = {}
    for arg in rollout["spec"]["strategy"]["canary"]["analysis"]["args"]:
        source = arg.get("valueFrom", {})
        if "value" in arg:
            resolved[arg["name"]] = arg["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            resolved[arg["name"]] = namespace
        elif source.get("podTemplateHashValue") == "Latest":
            resolved[arg["name"]] = canary_hash
        else:
            raise AssertionError(f"{name}: an analysis argument this test cannot resolve: {arg}")
    return resolved


def rendered_query(args: dict[str, str]) -> str:
    (metric,) = analysis_template()["spec"]["metrics"]
    query = metric["provider"]["prometheus"]["query"]
    for name, value in args.items():
        query = query.replace("{{args." + name + "}}", value)
    assert "{{" not in query, f"an argument the Rollout does not pass: {query}"
    return query


def succeeded(result: list[dict]) -> bool:
    """The template's successCondition, `len(result) == 0 || result[0] <= 0.05`, over the answer."""
    (metric,) = analysis_template()["spec"]["metrics"]
    assert metric["successCondition"] == "len(result) == 0 || result[0] <= 0.05"
    return len(result) == 0 or float(result[0]["value"][1]) <= 0.05


def kubernetes_pods_job() -> dict:
    """prometheus.yml's pod job, on file discovery."""
    jobs = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [job for job in jobs if job["job_name"] == "kubernetes-pods"]
    job.pop("kubernetes_sd_configs")
    return job


def operator_jobs(namespaces: set[str]) -> list[dict]:
    """The jobs the Prometheus Operator generates from every PodMonitor, in every namespace."""
    return [podmonitor_scrape_config(monitor, namespace)
            for monitor in base_objects("PodMonitor") for namespace in sorted(namespaces)]


def scrape_config(jobs: list[dict], pods_file: Path) -> dict:
    for job in jobs:
        job["file_sd_configs"] = [{"files": [str(pods_file)]}]
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": jobs}


def pod_of(service: str, namespace: str, name: str, port: int, pod_hash: str | None) -> dict:
    spec = services()[service]
    labels = {"app.kubernetes.io/name": service, "environment": namespace.removeprefix("prog-")}
    if pod_hash:
        labels["rollouts-pod-template-hash"] = pod_hash
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    return discovered_pod(namespace=namespace, name=name, address=f"127.0.0.1:{port}", labels=labels,
                          annotations=annotations, container=spec.name)


# Both discovery paths scrape the same pods in one Prometheus (each series once per path): every
# ratio is unchanged by the doubling, and each path's series are told apart by the Operator's own
# `endpoint` label, so each is shown to carry what the analysis and the alerts select on its own.
PATHS = {"prometheus.yml": 'endpoint=""', "PodMonitor": 'endpoint="ops"'}
NAMESPACES = ("prog-staging", "prog-production")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory) -> Iterator[Prometheus]:
    install_monitoring_tools()
    directory = tmp_path_factory.mktemp("prometheus")
    targets = {name: FakeTarget(traffic) for name, (_, _, traffic) in PODS.items()}
    healthy = FakeTarget(Traffic(SERVICE, ok=1))
    try:
        pods = [pod_of(SERVICE, namespace, f"{SERVICE}-{pod_hash}-{name}", targets[name].port, pod_hash)
                for name, (namespace, pod_hash, _) in PODS.items()]
        # One pod of every service in each environment, as its Deployment or Rollout labels it.
        pods += [pod_of(name, namespace, f"{name}-{namespace}", healthy.port, None)
                 for name in services() for namespace in NAMESPACES]
        pods_file = directory / "pods.json"
        pods_file.write_text(json.dumps(pods))
        jobs = [kubernetes_pods_job(), *operator_jobs(set(NAMESPACES))]
        with running_prometheus(scrape_config(jobs, pods_file), directory) as running:
            for selector in PATHS.values():
                expr = f"count by (namespace, rollouts_pod_template_hash) (rate(requests_total{{{selector}}}[5m]) > 0)"
                answers(running, expr, len(PODS) + len(NAMESPACES))
            yield running
    finally:
        for target in [*targets.values(), healthy]:
            target.close()


def answers(prometheus: Prometheus, expr: str, count: int) -> list[dict]:
    """`expr`'s answer once it has `count` series (scrapes and rates take a few seconds to settle)."""
    last: list[list[dict]] = [[]]

    def answered() -> list[dict] | None:
        last[0] = prometheus.query(expr)
        return last[0] if len(last[0]) == count else None

    return eventually(answered, timeout=30, interval=0.5, what=f"{count} series from {expr} (last: {last[0]})")


@pytest.mark.parametrize("path", PATHS)
def test_each_scrape_path_keeps_the_namespace_and_the_canary_hash(prometheus, path):
    found = prometheus.query(f'count by (namespace, rollouts_pod_template_hash) (requests_total{{service="{SERVICE}", '
                             f'rollouts_pod_template_hash!="", {PATHS[path]}}})')
    assert {(s["metric"]["namespace"], s["metric"]["rollouts_pod_template_hash"]) for s in found} == {
        (namespace, pod_hash) for namespace, pod_hash, _ in PODS.values()}


def test_the_canary_analysis_fails_a_failing_canary_and_passes_a_healthy_one(prometheus):
    def judged(namespace: str, pod_hash: str) -> list[dict]:
        return answers(prometheus, rendered_query(rollout_args(SERVICE, namespace, pod_hash)), 1)

    # The failing canary: its own pods answer half their requests with 503. Judged by the whole
    # service (the stable pods' 200 a second diluting its 5), it would pass.
    failing = judged("prog-production", CANARY)
    assert [s["metric"] for s in failing] == [{"namespace": "prog-production", "service": SERVICE}]
    assert 0.4 < float(failing[0]["value"][1]) < 0.6
    assert not succeeded(failing)
    diluted = prometheus.query(
        f'sum by (namespace, service) (rate(errors_total{{namespace="prog-production", service="{SERVICE}"}}[5m]))'
        f' / sum by (namespace, service) (rate(requests_total{{namespace="prog-production", service="{SERVICE}"}}[5m]))')
    assert float(diluted[0]["value"][1]) < 0.05, "the whole service's ratio would have passed it"

    # A healthy canary in production passes; staging's canary of the same template hash is judged
    # on staging's pods alone, and passes.
    for namespace, pod_hash in (("prog-production", HEALTHY_CANARY), ("prog-staging", CANARY)):
        result = judged(namespace, pod_hash)
        assert float(result[0]["value"][1]) == 0 and succeeded(result), (namespace, pod_hash, result)


def test_every_pod_gets_the_job_the_availability_alerts_select(prometheus):
    """The Operator's default job would be `<namespace>/<PodMonitor>`; ServiceDown, InstanceDown
    and ServiceAbsent select `job` by the service's name. Through either path, every service's pods,
    in both namespaces, are up under a job those alerts' own selectors find."""
    every = {(name, namespace) for name in services() for namespace in NAMESPACES}
    for rule in alerts():
        if rule["alert"] in {"ServiceDown", "InstanceDown", "ServiceAbsent"} and "job=~" in rule["expr"]:
            for listed in set(re.findall(r'up\{job=~"([^"]+)"\}', rule["expr"])):
                for path, selector in PATHS.items():
                    found = prometheus.query(f'count by (job, namespace) (up{{job=~"{listed}", {selector}}} == 1)')
                    assert {(s["metric"]["job"], s["metric"]["namespace"]) for s in found} == every, (rule["alert"], path)
