"""What makes a bad release roll back by itself, checked on every overlay's rendered objects.

The canary analysis judges the canary's own pods in its own namespace (the query itself is run
against a real Prometheus by tests/e2e/test_rollout_analysis.py); a Rollout whose new pods never
become ready aborts at its deadline; api-gateway's weights are real traffic shares through the
Gateway API; every pod passes the `restricted` Pod Security profile its namespace enforces; a
disruption budget never blocks evicting a broken pod.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.helpers.k8s import K8S_DIR, K8S_OVERLAYS, of, pod_labels, pod_templates, restricted_violations

PSA = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}
PROMETHEUS_ADDRESS = "http://prometheus.monitoring.svc:9090"


@pytest.fixture(params=K8S_OVERLAYS)
def rendered(request, k8s_render):
    return request.param, k8s_render(f"overlays/{request.param}")


def analysis_args_used(template: dict) -> set[str]:
    return set(re.findall(r"\{\{\s*args\.([\w-]+)\s*\}\}", yaml.safe_dump(template["spec"])))


def test_every_rollout_aborts_at_its_deadline_and_judges_its_canary_alone(rendered):
    _, objects = rendered
    rollouts = of(objects, "Rollout")
    assert rollouts
    for rollout in rollouts:
        name = rollout["metadata"]["name"]
        assert rollout["spec"]["progressDeadlineAbort"] is True, name
        assert rollout["spec"]["progressDeadlineSeconds"] <= 600, name
        analysis = rollout["spec"]["strategy"]["canary"]["analysis"]
        args = {arg["name"]: arg for arg in analysis["args"]}
        assert args["service"] == {"name": "service", "value": name}
        assert args["namespace"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert args["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
        for ref in analysis["templates"]:
            template = of(objects, "AnalysisTemplate", ref["templateName"])
            declared = {arg["name"] for arg in template["spec"]["args"]}
            # Argo Rollouts refuses to start an analysis missing an argument the template declares.
            assert declared == set(args) and analysis_args_used(template) == declared, name


def test_the_analysis_query_selects_one_namespace_and_one_replicaset(rendered):
    _, objects = rendered
    (metric,) = of(objects, "AnalysisTemplate", "error-rate")["spec"]["metrics"]
    query = metric["provider"]["prometheus"]["query"]
    selectors = re.findall(r"\{([^{}]*\{\{[^}]*\}\}[^{}]*)\}", query)
    for metric_name in ("errors_total", "requests_total"):
        found = re.search(metric_name + r"\{(.*?)\}\[", query)
        assert found, (metric_name, query)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        assert labels == {"namespace": "{{args.namespace}}", "service": "{{args.service}}",
                          "rollouts_pod_template_hash": "{{args.canary-hash}}"}, query
    assert selectors is not None
    assert "by (namespace, service)" in query


def test_every_rollouts_metrics_keep_its_replicaset(rendered):
    """The hash the analysis selects exists on the series: the Rollout's PodMonitor keeps the pod
    label rollouts-pod-template-hash (the Operator path), and prometheus.yml does the same."""
    _, objects = rendered
    keep = {"sourceLabels": ["__meta_kubernetes_pod_label_rollouts_pod_template_hash"],
            "targetLabel": "rollouts_pod_template_hash"}
    for rollout in of(objects, "Rollout"):
        monitors = [m for m in of(objects, "PodMonitor")
                    if all(pod_labels(rollout).get(k) == v for k, v in m["spec"]["selector"]["matchLabels"].items())]
        assert len(monitors) == 1, rollout["metadata"]["name"]
        for endpoint in monitors[0]["spec"]["podMetricsEndpoints"]:
            assert keep in endpoint.get("relabelings", []), rollout["metadata"]["name"]
    prometheus = yaml.safe_load((K8S_DIR.parent / "monitoring/prometheus/prometheus.yml").read_text())
    (pods,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "kubernetes-pods"]
    relabel = pods["relabel_configs"]
    assert {"source_labels": keep["sourceLabels"], "target_label": keep["targetLabel"]} in relabel


def test_podmonitors_name_the_job_as_the_service(rendered):
    """The Operator's job would otherwise be `<namespace>/<PodMonitor>`, which no alert selects
    (tests/e2e/test_rollout_analysis.py runs the generated relabelling in Prometheus)."""
    _, objects = rendered
    for monitor in of(objects, "PodMonitor"):
        assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
        assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == monitor["metadata"]["name"]


def test_api_gateway_weights_are_traffic_shares_at_the_edge(rendered):
    name, objects = rendered
    canary = of(objects, "Rollout", "api-gateway")["spec"]["strategy"]["canary"]
    routes = of(objects, "HTTPRoute")
    if not routes:
        # ingress-nginx clusters: no route to weigh, the steps count pods.
        assert "trafficRouting" not in canary, name
        return
    plugin = canary["trafficRouting"]["plugins"]["argoproj-labs/gatewayAPI"]
    route = of(objects, "HTTPRoute", plugin["httpRoute"])
    stable, preview = canary["stableService"], canary["canaryService"]
    of(objects, "Service", stable), of(objects, "Service", preview)
    for rule in route["spec"]["rules"]:
        backends = {b["name"]: b.get("weight", 1) for b in rule["backendRefs"]}
        # The plugin moves weight between exactly these two; the canary waits at 0.
        assert backends == {stable: 100, preview: 0}, rule


def test_every_disruption_budget_lets_broken_pods_be_evicted(rendered):
    _, objects = rendered
    budgets = of(objects, "PodDisruptionBudget")
    assert budgets
    for budget in budgets:
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", budget["metadata"]["name"]


def test_namespaces_enforce_the_restricted_pod_security_profile_and_every_pod_meets_it(rendered, k8s_render):
    name, objects = rendered
    (namespace,) = of(objects, "Namespace")
    labels = namespace["metadata"]["labels"]
    assert {k: labels.get(k) for k in PSA} == PSA, name
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"
    pods = pod_templates(objects)
    assert pods
    assert {what: problems for what, spec in pods if (problems := restricted_violations(spec))} == {}, name
    (monitoring,) = of(k8s_render("cluster"), "Namespace")
    assert {k: monitoring["metadata"]["labels"].get(k) for k in PSA} == PSA


def test_the_restricted_check_refuses_what_the_api_server_would():
    spec = {"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                                              "capabilities": {"drop": ["ALL"]},
                                                              "seccompProfile": {"type": "RuntimeDefault"}}}],
            "volumes": [{"name": "v", "emptyDir": {}}]}
    assert restricted_violations(spec) == []
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
    assert len(restricted_violations(spec)) == 3


def test_each_overlay_says_where_its_analysis_asks_prometheus(rendered, k8s_render):
    name, objects = rendered
    (metric,) = of(objects, "AnalysisTemplate", "error-rate")["spec"]["metrics"]
    address = metric["provider"]["prometheus"]["address"]
    overlay = yaml.safe_load((K8S_DIR / "overlays" / name / "kustomization.yaml").read_text())
    parents = [overlay] + [yaml.safe_load((K8S_DIR / "overlays" / r.removeprefix("../") / "kustomization.yaml")
                                          .read_text()) for r in overlay.get("resources", ()) if r.startswith("../")
                           and not r.startswith("../../")]
    patched = [p for o in parents for p in o.get("patches", ())
               if p.get("target", {}).get("kind") == "AnalysisTemplate"]
    assert patched, f"{name}: the overlay (or the one it builds on) sets the analysis' Prometheus address"
    assert address == PROMETHEUS_ADDRESS
    # That address is the monitoring stack's Prometheus Service.
    service = of(k8s_render("monitoring"), "Service", "prometheus")
    assert [p["port"] for p in service["spec"]["ports"]] == [9090]
