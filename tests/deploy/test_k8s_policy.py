"""Policies over the rendered manifests: what every workload must have, and what must hold
between objects (selectors, autoscalers, budgets, network paths, environments)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from prognetwork.registry import services
from tests.helpers.k8s import K8S_DIR, K8S_OVERLAYS, matches, of
from tests.helpers.ports import free_port

# Every registered service, by the one name its Kubernetes objects bear too.
SPECS = services()
SERVICES = {name: spec.port for name, spec in SPECS.items()}
OPS_PORTS = {name: spec.ops_port for name, spec in SPECS.items()}
ROLLOUTS = {"user-service", "api-gateway", "admin-client", "billing-service", "event-streaming"}
# The services behind the gateway that verify access tokens themselves, against the issuer's keys.
TOKEN_VERIFIERS = {"event-streaming", "billing-service", "notification-service"}
# The operators' web console: behind the edge like the gateway, a client of the gateway, and the
# reader of every service's /readiness (its Health page).
CONSOLE = "admin-client"
ENV_OVERLAYS = ["development", "staging", "production"]
WORKLOAD_KINDS = {"Deployment", "Rollout", "Job", "CronJob"}
# Batch work run with the user service's image: migrations before a release, the audit log's purge daily.
BATCH_KINDS = {"Job", "CronJob"}
# The canary's own pods in its own namespace (tests/deploy/test_k8s_rollouts.py, tests/e2e/test_rollout_analysis.py).
CANARY = 'namespace="{{args.namespace}}", service="{{args.service}}", rollouts_pod_template_hash="{{args.canary-hash}}"'
ERROR_RATE_QUERY = (
    f'sum by (namespace, service) (rate(errors_total{{{CANARY}}}[5m])) / '
    f'(sum by (namespace, service) (rate(requests_total{{{CANARY}}}[5m])) > 0)'
)
HOSTS = {
    "development": {"api.dev.prognetwork.com", "app.dev.prognetwork.com"},
    "staging": {"api.staging.prognetwork.com", "app.staging.prognetwork.com"},
    "production": {"api.prognetwork.com", "app.prognetwork.com"},
}


def workloads(objects):
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_template(workload):
    """The pod template of a workload; a CronJob's is inside its Job template."""
    spec = workload["spec"]
    return (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)["template"]


def pod_spec(workload):
    return pod_template(workload)["spec"]


def pod_labels(workload):
    return pod_template(workload)["metadata"].get("labels", {})


def config(objects) -> dict:
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("prog-config")]
    assert len(maps) == 1
    return maps[0]["data"]


@pytest.fixture(params=K8S_OVERLAYS)
def rendered(request, k8s_render):
    return request.param, k8s_render(f"overlays/{request.param}")


@pytest.fixture(params=ENV_OVERLAYS)
def env(request, k8s_render):
    return request.param, k8s_render(f"overlays/{request.param}")


def test_every_service_is_deployed_once(rendered):
    _, objects = rendered
    names = {o["metadata"]["name"]: o["kind"] for o in objects if o["kind"] in {"Deployment", "Rollout"}}
    assert names == {name: "Rollout" if name in ROLLOUTS else "Deployment" for name in SERVICES}


def test_every_container_is_sized_probed_and_locked_down(rendered):
    _, objects = rendered
    for workload in workloads(objects):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec.get("automountServiceAccountToken") is False, where
        assert spec.get("serviceAccountName"), where
        mounts_tmp = {v["name"] for v in spec.get("volumes", ()) if "emptyDir" in v}
        for c in spec.get("initContainers", []) + spec["containers"]:
            for key in ("requests", "limits"):
                assert set(c.get("resources", {}).get(key, {})) >= {"cpu", "memory"}, f"{where}: {key}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert isinstance(sc.get("runAsUser"), int), where
            assert any(m["mountPath"] == "/tmp" and m["name"] in mounts_tmp for m in c["volumeMounts"]), where
            image = c["image"]
            assert not image.endswith(":latest") and ":latest@" not in image, f"{where}: {image}"
            assert re.search(r":[\w.-]+(@sha256:[0-9a-f]{64})?$", image), f"{where}: untagged image {image}"


def test_services_have_probes_drain_and_grace(rendered):
    _, objects = rendered
    settings = config(objects)
    drain, timeout = float(settings["SHUTDOWN_DRAIN_SECONDS"]), float(settings["SHUTDOWN_TIMEOUT_SECONDS"])
    for name, port in SERVICES.items():
        workload = next(o for o in objects if o["kind"] in {"Deployment", "Rollout"} and o["metadata"]["name"] == name)
        spec = pod_spec(workload)
        (c,) = spec["containers"]
        ops = OPS_PORTS[name]
        assert c["ports"] == [{"name": "http", "containerPort": port}, {"name": "ops", "containerPort": ops}]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert (env["PORT"], env["OPS_PORT"]) == (str(port), str(ops)), "the service listens where the ports say"
        # Probes on the ops port: the API port answers no operational path.
        assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "ops"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "ops"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readiness", "port": "ops"}
        assert "initialDelaySeconds" not in c["livenessProbe"], "the startupProbe covers start-up"
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert spec["terminationGracePeriodSeconds"] > pre_stop + drain + timeout, name
        # Endpoints are removed while preStop runs; kube-proxy, the ingress and the gateway's
        # balancers take a few seconds to follow, during which the pod still gets requests.
        assert pre_stop >= 5, name
        # The kubelet sees readiness fail (503 from SIGTERM on) before the listeners close.
        probe = c["readinessProbe"]
        assert probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) <= pre_stop + drain + timeout, name
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(ops),
                               "prometheus.io/path": "/metrics"}
        assert any(e.get("configMapRef", {}).get("name", "").startswith("prog-config") for e in c["envFrom"])


def test_updates_start_new_pods_before_old_ones_stop(rendered):
    _, objects = rendered
    for d in of(objects, "Deployment"):
        assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    for r in of(objects, "Rollout"):
        canary = r["spec"]["strategy"]["canary"]
        assert (canary["maxSurge"], canary["maxUnavailable"]) == (1, 0)
        weights = [s["setWeight"] for s in canary["steps"] if "setWeight" in s]
        assert weights == sorted(weights) and len(weights) >= 2 and weights[-1] < 100, "a gradual shift"
        (template,) = canary["analysis"]["templates"]
        of(objects, "AnalysisTemplate", template["templateName"])
        # The analysis judges the `service` label of the Rollout's own metrics: its name.
        assert canary["analysis"]["args"][0] == {"name": "service", "value": r["metadata"]["name"]}


def test_rollback_analysis_uses_the_alerting_error_rate(rendered):
    _, objects = rendered
    (metric,) = of(objects, "AnalysisTemplate", "error-rate")["spec"]["metrics"]
    assert metric["provider"]["prometheus"] == {"address": "http://prometheus.monitoring.svc:9090",
                                               "query": ERROR_RATE_QUERY}
    assert metric["successCondition"] == "len(result) == 0 || result[0] <= 0.05"
    sources = "".join(p.read_text() for p in K8S_DIR.rglob("*.yaml"))
    assert sources.count("rate(errors_total") == 1, "the query is written in one place"


def ops_service_name(name: str) -> str:
    return f"{name}-ops"


def test_services_select_exactly_their_pods(rendered):
    """Each service has its API Service, on `http` alone, which the routes name; every service the
    console watches also has an ops Service, on `ops` alone, for the console's Health page. So
    nothing routed through a Service (the edge included) reaches `ops`."""
    _, objects = rendered
    ops_services = {ops_service_name(name): name for name in SERVICES if name != CONSOLE}
    # A canary Rollout's stable and canary Services, whose weights the edge's route sets.
    canary_services = {r["spec"]["strategy"]["canary"][key]: r["metadata"]["name"] for r in of(objects, "Rollout")
                       for key in ("stableService", "canaryService") if key in r["spec"]["strategy"]["canary"]}
    for service in of(objects, "Service"):
        name = service["metadata"]["name"]
        selector = service["spec"]["selector"]
        selected = [w["metadata"]["name"] for w in workloads(objects) if matches(selector, pod_labels(w))]
        assert selected == [ops_services.get(name, canary_services.get(name, name))], f"Service {name} selects {selected}"
        assert service["spec"]["type"] == "ClusterIP"
        if name in ops_services:
            # Unready pods too: a failing /readiness is what the Health page is there to show.
            assert service["spec"]["publishNotReadyAddresses"] is True, name
            assert service["spec"]["ports"] == [
                {"name": "ops", "port": OPS_PORTS[selected[0]], "targetPort": "ops"}], name
        else:
            assert "publishNotReadyAddresses" not in service["spec"], "unready pods take no traffic"
            assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    assert {s["metadata"]["name"] for s in of(objects, "Service")} == set(SERVICES) | set(ops_services) | set(canary_services)


def test_autoscalers_own_replicas_of_sized_workloads(rendered):
    name_, objects = rendered
    hpas = of(objects, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(SERVICES)
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        target = of(objects, ref["kind"], ref["name"])
        assert ref["apiVersion"] == target["apiVersion"]
        assert "replicas" not in target["spec"], f"{ref['name']}: the HPA owns replicas"
        assert all(c["resources"]["requests"] for c in pod_spec(target)["containers"])
        goals = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
        assert goals == {"cpu": {"type": "Utilization", "averageUtilization": 70},
                         "memory": {"type": "Utilization", "averageUtilization": 80}}
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
        if name_.startswith("production"):
            assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)


def routed(rule: dict) -> list[dict]:
    """The backends a route rule sends traffic to: a canary's backend waits at weight 0 until its
    Rollout sets one (components/gateway-api/canary.yaml)."""
    return [backend for backend in rule.get("backendRefs", ()) if backend.get("weight", 1) > 0]


def test_every_workload_has_a_disruption_budget(rendered):
    _, objects = rendered
    budgets = of(objects, "PodDisruptionBudget")
    for name in SERVICES:
        workload = next(o for o in workloads(objects) if o["metadata"]["name"] == name)
        covering = [b for b in budgets if matches(b["spec"]["selector"], pod_labels(workload))]
        assert len(covering) == 1 and covering[0]["spec"] == {
            "maxUnavailable": 1, "selector": covering[0]["spec"]["selector"],
            "unhealthyPodEvictionPolicy": "AlwaysAllow"}, name


def test_every_service_is_scraped(rendered):
    _, objects = rendered
    monitors = of(objects, "PodMonitor")
    for name in SERVICES:
        workload = next(o for o in workloads(objects) if o["metadata"]["name"] == name)
        (monitor,) = [m for m in monitors if matches(m["spec"]["selector"], pod_labels(workload))]
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "ops"
        assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_migrations_run_with_the_user_service_image(rendered):
    _, objects = rendered
    job = of(objects, "Job", "prog-migrate")
    (c,) = pod_spec(job)["containers"]
    (users,) = pod_spec(of(objects, "Rollout", "user-service"))["containers"]
    assert c["command"] == ["prog", "migrate"] and c["image"] == users["image"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    # Argo CD's order (tests/deploy/test_k8s_argocd.py): after what it reads, before the workloads.
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"


# ---- network paths -------------------------------------------------------------------

def peer(p: dict) -> str:
    if "ipBlock" in p:
        block = p["ipBlock"]
        return "internet" if block["cidr"] == "0.0.0.0/0" and block.get("except") else f"cidr:{block['cidr']}"
    ns = p.get("namespaceSelector")
    pods = p.get("podSelector", {}).get("matchLabels", {})
    pod = pods.get("app.kubernetes.io/name") or pods.get("k8s-app") or "*"
    if ns is None:
        return f"pod:{pod}"
    names = ns.get("matchLabels", {}).get("kubernetes.io/metadata.name")
    if names is None:
        (expr,) = ns["matchExpressions"]
        names = ",".join(sorted(expr["values"]))
    return f"ns:{names}/{pod}"


def paths(objects, labels: dict, direction: str) -> set[tuple[str, str]]:
    allowed = set()
    for policy in of(objects, "NetworkPolicy"):
        spec = policy["spec"]
        if not matches(spec["podSelector"], labels) or direction.capitalize() not in spec["policyTypes"]:
            continue
        for rule in spec.get(direction, ()):
            key = "from" if direction == "ingress" else "to"
            for p in rule[key]:
                for port in rule["ports"]:
                    allowed.add((peer(p), str(port["port"])))
    return allowed


DNS = {("ns:kube-system/kube-dns", "53")}
PROMETHEUS = {("ns:monitoring/prometheus", "ops")}
# The console's Health page reads every other service's /readiness on its ops port.
CONSOLE_READS = {("pod:admin-client", "ops")}
EDGE = "ns:envoy-gateway-system,ingress-nginx/*"
DATA = "cidr:10.0.0.0/16"
EXPECTED_PATHS = {
    "api-gateway": {
        # The console is one of the API's clients.
        "ingress": {(EDGE, "8000"), ("pod:admin-client", "8000")} | PROMETHEUS | CONSOLE_READS,
        "egress": DNS | {("pod:user-service", "3007"), ("pod:event-streaming", "8001"), ("pod:billing-service", "3003"),
                         ("pod:notification-service", "3004"), (DATA, "6379")},
    },
    "user-service": {
        # The streaming, billing and notification services fetch the key set to verify tokens themselves.
        "ingress": {("pod:api-gateway", "3007"), ("pod:event-streaming", "3007"), ("pod:billing-service", "3007"),
                    ("pod:notification-service", "3007")} | PROMETHEUS | CONSOLE_READS,
        "egress": DNS | {(DATA, "5432"), (DATA, "6379")},
    },
    "notification-service": {
        # The admin API's emails through the gateway (and in development the outbox); SendGrid's
        # API is public HTTPS.
        "ingress": {("pod:api-gateway", "3004")} | PROMETHEUS | CONSOLE_READS,
        "egress": DNS | {(DATA, "5432"), (DATA, "6379"), ("pod:user-service", "3007"), ("internet", "443")},
    },
    "event-streaming": {
        "ingress": {("pod:api-gateway", "8001")} | PROMETHEUS | CONSOLE_READS,
        "egress": DNS | {(DATA, "5432"), (DATA, "6379"), ("pod:user-service", "3007")},
    },
    "billing-service": {
        # Stripe's webhooks come through the gateway like every client's request; Stripe's API is
        # public HTTPS.
        "ingress": {("pod:api-gateway", "3003")} | PROMETHEUS | CONSOLE_READS,
        "egress": DNS | {(DATA, "5432"), (DATA, "6379"), ("pod:user-service", "3007"), ("internet", "443")},
    },
    "admin-client": {
        # Browsers through the edge; the API through the gateway only (Redis holds its sessions);
        # every other service's ops port (/readiness) and Prometheus' query API for its Health page.
        "ingress": {(EDGE, "3000")} | PROMETHEUS,
        "egress": DNS | {("pod:api-gateway", "8000"), (DATA, "6379"), ("ns:monitoring/prometheus", "9090")}
        | {(f"pod:{name}", str(port)) for name, port in OPS_PORTS.items() if name != CONSOLE},
    },
    "prog-migrate": {"ingress": set(), "egress": DNS | {(DATA, "5432")}},
    # The audit log's purge: PostgreSQL alone (its signing key is a mounted file), nothing in.
    "audit-retention": {"ingress": set(), "egress": DNS | {(DATA, "5432")}},
    # Event-log retention: PostgreSQL and the archive bucket (S3, public HTTPS); the usage report: PostgreSQL.
    "event-retention": {"ingress": set(), "egress": DNS | {(DATA, "5432"), ("internet", "443")}},
    "usage-report": {"ingress": set(), "egress": DNS | {(DATA, "5432")}},
    # Database backups and their weekly proof: PostgreSQL, the Pushgateway, S3 and STS (public HTTPS).
    "backup": {"ingress": set(), "egress": DNS | {(DATA, "5432"), ("ns:monitoring/pushgateway", "9091"), ("internet", "443")}},
    "backup-verify": {"ingress": set(), "egress": DNS | {(DATA, "5432"), ("ns:monitoring/pushgateway", "9091"), ("internet", "443")}},
}
DEV_DATASTORES = {("pod:postgresql", "5432"), ("pod:redis", "6379")}
# Every service exports its traces to the OpenTelemetry Collector (OTLP/HTTP).
OTLP = ("ns:monitoring/otel-collector", "4318")
for _name in SERVICES:
    EXPECTED_PATHS[_name]["egress"].add(OTLP)


def test_network_policies_allow_exactly_the_architecture(rendered):
    name, objects = rendered
    deny = of(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for workload in workloads(objects):
        labels = pod_labels(workload)
        expected = copy.deepcopy(EXPECTED_PATHS[workload["metadata"]["name"]])
        if name == "development":
            expected["egress"] |= DEV_DATASTORES
        for direction in ("ingress", "egress"):
            assert paths(objects, labels, direction) == expected[direction], (workload["metadata"]["name"], direction)
    # Public HTTPS (SendGrid, Stripe) never reaches the VPC, the cluster or instance metadata.
    for policy in of(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("egress", ()):
            for to in rule["to"]:
                if to.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
                        to["ipBlock"]["except"]), policy["metadata"]["name"]


def test_only_prometheus_and_the_console_reach_the_ops_port(rendered):
    _, objects = rendered
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        if name not in SERVICES:
            continue
        ingress = paths(objects, pod_labels(workload), "ingress")
        ops = PROMETHEUS | (CONSOLE_READS if name != CONSOLE else set())
        assert {(who, port) for who, port in ingress if port in ("ops", str(OPS_PORTS[name]))} == ops, name
        assert {port for who, port in ingress - ops} <= {str(SERVICES[name])}, name


def test_datastore_urls_come_from_the_secret_where_the_service_needs_them(rendered):
    _, objects = rendered
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        if name not in SPECS:
            continue
        (c,) = pod_spec(workload)["containers"]
        from_secret = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        egress = paths(objects, pod_labels(workload), "egress")
        for need, (variable, port) in {"postgres": ("DATABASE_URL", "5432"), "redis": ("REDIS_URL", "6379")}.items():
            needed = need in SPECS[name].needs
            assert (variable in from_secret) == needed, (name, variable)
            assert ((DATA, port) in egress) == needed, (name, port)


# ---- environments ---------------------------------------------------------------------

def test_namespaces_labels_and_config_per_environment(env):
    name, objects = env
    ns = of(objects, "Namespace", f"prog-{name}")
    assert ns["metadata"]["labels"]["environment"] == name and ns["metadata"]["labels"]["team"] == "platform"
    assert all(o["metadata"]["labels"]["environment"] == name for o in objects)
    settings = config(objects)
    api, app = sorted(HOSTS[name])
    assert settings["PROG_ENV"] == name and settings["LOG_FORMAT"] == "json"
    assert settings["JWT_ISSUER"] == f"https://{api}" and settings["APP_URL"] == f"https://{app}"


# Stand-ins for what AWS Secrets Manager holds: well-formed, not placeholders.
SECRET_VALUES = {
    "DATABASE_URL": "postgresql://prog:Vq8tX2mZr5Lw@db.internal:5432/prog?sslmode=require",
    "REDIS_URL": "rediss://cache.internal:6379/0",
    "SENDGRID_API_KEY": "SG.4fQ1c0b2Zt9xv8Lr3mWq.Jp7Ks2Vn5Hc8Rd1Tg4Yb6Ne9Ua3",
    "STRIPE_SECRET_KEY": "sk_live_51Nq8ZtKx3Vb7Lr2Wm9Qc4Hd6Jp1Ys5Ua8Te0Gf3Rn7",
    "STRIPE_WEBHOOK_SECRET": "whsec_Qm7Lr2Xt9Vb4Kc8Hd1Jp6Ys3Ua5Te0Gf",
}


def pod_environment(objects, container: dict, secrets_dir) -> dict[str, str]:
    """The environment `prog serve` sees in this container: the ConfigMap, its own variables,
    Secret references filled with stand-ins and the secret files in `secrets_dir`."""
    from prognetwork.users.keys import generate_pem

    env = dict(config(objects))
    for item in container.get("env", ()):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = SECRET_VALUES[ref["key"]] if ref else item["value"]
    secrets_dir.mkdir(exist_ok=True)
    for mount in [v for v in container.get("volumeMounts", ()) if v["mountPath"] == env.get("SECRETS_DIR")]:
        (volume,) = [v for v in container_volumes(objects, container) if v["name"] == mount["name"]]
        for item in volume["secret"]["items"]:
            value = generate_pem() if item["key"] == "JWT_SIGNING_KEYS" else SECRET_VALUES[item["key"]]
            (secrets_dir / item["path"]).write_text(value)
    return {**env, "SECRETS_DIR": str(secrets_dir)}


def container_volumes(objects, container: dict) -> list[dict]:
    for workload in workloads(objects):
        if container in pod_spec(workload)["containers"]:
            return pod_spec(workload).get("volumes", [])
    raise AssertionError(f"no workload holds {container['name']}")


@pytest.mark.parametrize("name", ["staging", "production"])
def test_every_pod_passes_prog_config_check(k8s_render, name, tmp_path):
    """What `prog serve` checks before it starts, run on each rendered pod's own environment."""
    objects = k8s_render(f"overlays/{name}")
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}

    def check(env: dict[str, str], service: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "prognetwork", "config", "check", "--service", service],
                              env={**base, **env}, capture_output=True, text=True, timeout=60)

    checked = {}
    for workload in workloads(objects):
        app = workload["metadata"]["name"]
        if app not in SPECS:
            continue
        (c,) = pod_spec(workload)["containers"]
        checked[app] = env = pod_environment(objects, c, tmp_path / app)
        assert env["PROG_ENV"] == name
        result = check(env, app)
        assert result.returncode == 0, f"{app}: {result.stdout}{result.stderr}"
    assert set(checked) == set(SPECS)
    # The check can fail: without the trusted proxies, it says so.
    unset = {k: v for k, v in checked["api-gateway"].items() if k != "FORWARDED_ALLOW_IPS"}
    result = check(unset, "api-gateway")
    assert result.returncode == 1 and "FORWARDED_ALLOW_IPS is required" in result.stdout


@pytest.mark.parametrize("name", ["development", "staging", "production"])
def test_the_gateway_and_the_verifiers_reach_services_by_their_names(k8s_render, name, tmp_path,
                                                                     settings_from_environment):
    """The settings each pod loads from its own environment: api-gateway's upstream for every
    route, and the key set every token verifier fetches, are Services of the services' names,
    on paths the NetworkPolicies open."""
    objects = k8s_render(f"overlays/{name}")
    service_names = {s["metadata"]["name"] for s in of(objects, "Service")}
    (issuer,) = [spec for spec in SPECS.values() if "JWT_SIGNING_KEYS" in spec.secrets]
    (edge,) = [spec for spec in SPECS.values() if spec.edge]
    for workload in workloads(objects):
        app = workload["metadata"]["name"]
        if app not in SPECS:
            continue
        (c,) = pod_spec(workload)["containers"]
        settings = settings_from_environment(app, pod_environment(objects, c, tmp_path / app))
        egress = paths(objects, pod_labels(workload), "egress")
        reached = {settings.jwks_url} if app in {edge.name, *TOKEN_VERIFIERS} else set()
        if app == edge.name:
            reached |= {settings.upstreams[route.upstream] for route in settings.routes}
        for url in reached:
            target = re.fullmatch(r"http://([a-z0-9-]+)(/.*)?", url)
            assert target and target.group(1) in service_names, f"{app}: {url} is no Service here"
            assert (f"pod:{target.group(1)}", str(SPECS[target.group(1)].port)) in egress, (app, url)
        if reached:
            assert settings.jwks_url == f"http://{issuer.name}/.well-known/jwks.json", app


def test_secrets_are_never_committed_outside_development(env):
    name, objects = env
    secrets = of(objects, "Secret")
    if name == "development":
        (secret,) = secrets
        import base64

        values = [base64.b64decode(v).decode() for v in secret["data"].values()]
        assert all("dev-only-not-secret" in v or v.startswith("redis://redis:") for v in values)
        return
    assert secrets == [], "staging and production Secrets come from AWS Secrets Manager"
    external = of(objects, "ExternalSecret", "prognetwork-secrets")
    assert external["spec"]["target"]["name"] == "prognetwork-secrets"
    # The environment's own secret, through its own namespace's store (tests/deploy/test_k8s_secrets.py).
    assert external["spec"]["secretStoreRef"] == {"kind": "SecretStore", "name": "aws-secrets-manager"}
    assert external["spec"]["dataFrom"] == [{"extract": {"key": f"prognetwork/{name}/app"}}]


def test_secret_files_are_mounted_per_service(rendered):
    _, objects = rendered
    files = {"user-service": ["JWT_SIGNING_KEYS"], "notification-service": ["SENDGRID_API_KEY"], "api-gateway": [],
             "event-streaming": [], "billing-service": ["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"],
             "admin-client": []}
    # Exactly the secrets each service's spec says it reads (what `prog config check` checks).
    assert {name: sorted(keys) for name, keys in files.items()} == {
        name: sorted(spec.secrets) for name, spec in SPECS.items()}
    for name, keys in files.items():
        workload = next(o for o in workloads(objects) if o["metadata"]["name"] == name)
        volumes = [v["secret"] for v in pod_spec(workload).get("volumes", ()) if "secret" in v]
        assert [i["key"] for v in volumes for i in v["items"]] == keys, name
        (c,) = pod_spec(workload)["containers"]
        if keys:
            assert {"mountPath": "/run/secrets/prognetwork", "name": "secrets", "readOnly": True} in c["volumeMounts"]
        assert config(objects)["SECRETS_BACKEND"] == "file" and config(objects)["SECRETS_DIR"] == "/run/secrets/prognetwork"


def test_images_are_immutable_per_environment(env):
    name, objects = env
    for workload in workloads(objects):
        for c in pod_spec(workload)["containers"]:
            assert c["image"].startswith("123456789012.dkr.ecr.us-east-1.amazonaws.com/prognetwork/")
            if name == "production":
                assert re.search(r":\d+\.\d+\.\d+@sha256:[0-9a-f]{64}$", c["image"]), c["image"]


# Work that resumes or starts over when its node is reclaimed: email delivery (its durable cursor),
# the audit log's purge (one transaction, rolled back) and the checkpointed batch jobs.
SPOT_WORKLOADS = {"notification-service", "audit-retention", "event-retention", "usage-report"}


def test_fault_tolerant_workers_prefer_spot_in_production_only(env):
    name, objects = env
    for workload in workloads(objects):
        spec = pod_spec(workload)
        spot = workload["metadata"]["name"] in SPOT_WORKLOADS and name == "production"
        assert "nodeSelector" not in spec, "a hard node choice leaves no on-demand fallback"
        tolerations = spec.get("tolerations", [])
        assert (tolerations == [{"key": "spot-instance", "operator": "Equal", "value": "true",
                                 "effect": "NoSchedule"}]) == spot, workload["metadata"]["name"]
        if spot:
            (preferred,) = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            assert preferred["preference"]["matchExpressions"] == [
                {"key": "node-type", "operator": "In", "values": ["spot"]}]
            # Kubernetes' default grace period (30 s) where the pod sets none.
            assert spec.get("terminationGracePeriodSeconds", 30) < 120, "inside the spot interruption notice"
        constraints = {t["topologyKey"] for t in spec.get("topologySpreadConstraints", ())}
        if workload["kind"] not in BATCH_KINDS:
            assert "topology.kubernetes.io/zone" in constraints


def reaches_api_port(objects, service_name: str, port: int) -> bool:
    """Whether a backend (Service name and port) exists and leads to its workload's API port."""
    services = [s for s in of(objects, "Service") if s["metadata"]["name"] == service_name]
    ports = [p for s in services for p in s["spec"]["ports"] if p["port"] == port]
    if len(services) != 1 or len(ports) != 1:
        return False
    (workload,) = [w for w in workloads(objects) if matches(services[0]["spec"]["selector"], pod_labels(w))]
    (c,) = pod_spec(workload)["containers"]
    return container_port(c, ports[0]["targetPort"]) == SERVICES[workload["metadata"]["name"]]


def container_port(container: dict, port: int | str) -> int:
    """A Service's target port, by name or number, as the container's port number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def test_external_routes(rendered):
    """api.<domain> reaches api-gateway and app.<domain> the console, each through a Service that
    exists, on the port the Service exposes, which leads to the workload's API port."""
    name, objects = rendered
    env = name.split("-")[0]
    routes = of(objects, "HTTPRoute")
    ingresses = of(objects, "Ingress")
    served = {}
    if name.endswith("ingress-nginx"):
        assert not routes and not of(objects, "Gateway")
        assert ingresses
        for ing in ingresses:
            spec, annotations = ing["spec"], ing["metadata"]["annotations"]
            assert spec["ingressClassName"] == "nginx" and "kubernetes.io/ingress.class" not in annotations
            assert not any("rewrite-target" in a or "use-regex" in a for a in annotations)
            assert annotations["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
            hosts = {r["host"] for r in spec["rules"]}
            assert set(spec["tls"][0]["hosts"]) == hosts <= HOSTS[env] and spec["tls"][0]["secretName"] == "prog-tls"
            for rule in spec["rules"]:
                for where in rule["http"]["paths"]:
                    backend = where["backend"]["service"]
                    assert reaches_api_port(objects, backend["name"], backend["port"]["number"]), backend
                    served.setdefault(rule["host"].split(".")[0], set()).add(backend["name"])
        # cert-manager issues the certificate once, for both hosts: two Ingresses asking for the
        # same Secret would each claim it.
        (issuing,) = [i for i in ingresses if "cert-manager.io/cluster-issuer" in i["metadata"]["annotations"]]
        assert issuing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
        assert set(issuing["spec"]["tls"][0]["hosts"]) == HOSTS[env]
        assert served == {"api": {"api-gateway"}, "app": {"admin-client"}}
        return
    assert not ingresses
    gateway = of(objects, "Gateway", "prognetwork")
    https = next(x for x in gateway["spec"]["listeners"] if x["protocol"] == "HTTPS")
    (cert,) = of(objects, "Certificate")
    assert https["tls"]["certificateRefs"][0]["name"] == cert["spec"]["secretName"]
    assert set(cert["spec"]["dnsNames"]) == HOSTS[env]
    for route in routes:
        assert all(p["name"] == "prognetwork" for p in route["spec"]["parentRefs"])
        for rule in route["spec"]["rules"]:
            for backend in routed(rule):
                assert reaches_api_port(objects, backend["name"], backend["port"]), backend
                for host in route["spec"]["hostnames"]:
                    served.setdefault(host.split(".")[0], set()).add(backend["name"])
    assert served == {"api": {"api-gateway"}, "app": {"admin-client"}}
    redirect = of(objects, "HTTPRoute", "https-redirect")
    assert set(redirect["spec"]["hostnames"]) == HOSTS[env]
    assert redirect["spec"]["parentRefs"][0]["sectionName"] == "http"


STRIPE_WEBHOOK_PATH = "/api/v1/billing/webhooks/stripe"  # the public address Stripe's account is given


def prefix_matches(prefix: str, path: str) -> bool:
    """Gateway API PathPrefix and Ingress Prefix: a match on whole path segments."""
    prefix = prefix.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def edge_backends(objects, host: str, path: str) -> set[str]:
    """The Services an HTTPS request for `host` and `path` is sent to from outside the cluster."""
    return {name for name, _ in edge_matches(objects, host, path)}


def edge_matches(objects, host: str, path: str) -> list[tuple[str, dict]]:
    """Where an HTTPS request for `host` and `path` is sent from outside the cluster, by the
    HTTPRoutes on the Gateway's HTTPS listener or by the Ingress rules (in both the longest
    matching prefix wins; no route here matches on headers, methods or regexes): each Service,
    with what the edge applies on the way, the rule's `timeouts` or the Ingress's annotations."""
    found: list[tuple[int, str, dict]] = []
    for route in of(objects, "HTTPRoute"):
        spec = route["spec"]
        if host not in spec.get("hostnames", [host]) or not any(
                ref.get("sectionName") in (None, "https") for ref in spec["parentRefs"]):
            continue
        for rule in spec["rules"]:
            for match in rule.get("matches", [{}]):
                where = match.get("path", {"type": "PathPrefix", "value": "/"})
                assert set(match) <= {"path"} and where["type"] in {"PathPrefix", "Exact"}, match
                if where["value"] == path or where["type"] == "PathPrefix" and prefix_matches(where["value"], path):
                    found += [(len(where["value"]), backend["name"], rule.get("timeouts", {}))
                              for backend in routed(rule)]
    for ingress in of(objects, "Ingress"):
        assert "defaultBackend" not in ingress["spec"]
        for rule in ingress["spec"]["rules"]:
            if rule.get("host", host) != host:
                continue
            for where in rule["http"]["paths"]:
                assert where["pathType"] in {"Prefix", "Exact"}, where
                if where["path"] == path or where["pathType"] == "Prefix" and prefix_matches(where["path"], path):
                    found.append((len(where["path"]), where["backend"]["service"]["name"],
                                  ingress["metadata"].get("annotations", {})))
    longest = max((length for length, _, _ in found), default=0)
    return [(name, applied) for length, name, applied in found if length == longest]


def test_stripe_webhooks_reach_billing_through_the_gateway_only(rendered, tmp_path):
    """Stripe posts to https://api.<domain>/api/v1/billing/webhooks/stripe: the edge hands it to
    the api-gateway Service (never to billing-service, which no route names), the gateway's own
    route table (loaded from its pod's environment) forwards it without asking for a token to
    billing-service's Service, and the NetworkPolicies open each hop."""
    from prognetwork.gateway.proxy import compile_routes, match, upstream_url

    name, objects = rendered
    api_host = next(h for h in HOSTS[name.split("-")[0]] if h.startswith("api."))
    assert edge_backends(objects, api_host, STRIPE_WEBHOOK_PATH) == {"api-gateway"}
    # No route or Ingress exposes billing-service itself, on any host or path.
    named = {backend["name"] for route in of(objects, "HTTPRoute") for rule in route["spec"]["rules"]
             for backend in routed(rule)}
    named |= {where["backend"]["service"]["name"] for ingress in of(objects, "Ingress")
              for rule in ingress["spec"]["rules"] for where in rule["http"]["paths"]}
    assert "billing-service" not in named and named <= {"api-gateway", "admin-client"}
    assert not [o for o in objects if o["kind"] in {"GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute"}]

    gateway = next(w for w in workloads(objects) if w["metadata"]["name"] == "api-gateway")
    (c,) = pod_spec(gateway)["containers"]
    settings = SPECS["api-gateway"].load_settings(**pod_environment(objects, c, tmp_path / "api-gateway"))
    route = match(compile_routes(settings), STRIPE_WEBHOOK_PATH)
    # Stripe sends no access token: its signature, which billing verifies, is the credential.
    assert route and route.upstream == "billing-service" and route.public, route
    target = upstream_url(route, STRIPE_WEBHOOK_PATH, b"")
    assert (target.host, target.path) == ("billing-service", "/v1/billing/webhooks/stripe"), target
    service = of(objects, "Service", "billing-service")
    assert target.port == service["spec"]["ports"][0]["port"]
    billing = next(w for w in workloads(objects) if w["metadata"]["name"] == "billing-service")
    (bc,) = pod_spec(billing)["containers"]
    (port,) = [p["containerPort"] for p in bc["ports"] if p["name"] == service["spec"]["ports"][0]["targetPort"]]
    assert port == SERVICES["billing-service"]
    assert ("ns:envoy-gateway-system,ingress-nginx/*", str(SERVICES["api-gateway"])) in paths(
        objects, pod_labels(gateway), "ingress")
    assert ("pod:billing-service", str(port)) in paths(objects, pod_labels(gateway), "egress")
    assert ("pod:api-gateway", str(port)) in paths(objects, pod_labels(billing), "ingress")


# Server-Sent Events: the gateway's event stream, and the console's relay of it to the browser.
STREAMS = {"api": ("/api/v1/events/stream", "api-gateway"), "app": ("/events/stream", "admin-client")}
NGINX = "nginx.ingress.kubernetes.io/"


def test_event_streams_cross_the_edge_unbuffered_and_without_a_deadline(rendered, tmp_path):
    """A stream lasts as long as the browser stays. At the edge its path gets no request deadline
    (without one, Envoy Gateway gives a route Envoy's 15 s, which would end every stream) or,
    through ingress-nginx, no buffering and a read timeout well above nginx's 60 s and the
    stream's keep-alive interval (a quiet relay must not be cut). Every other path keeps the
    edge's defaults: a page that hangs still times out."""
    from prognetwork.gateway.proxy import compile_routes, match

    name, objects = rendered
    hosts = {host.split(".")[0]: host for host in HOSTS[name.split("-")[0]]}
    heartbeat = SPECS["event-streaming"].load_settings().stream_heartbeat_seconds
    # The edge's stream path on api.<domain> is the one the gateway's own route table streams.
    gateway = next(w for w in workloads(objects) if w["metadata"]["name"] == "api-gateway")
    (c,) = pod_spec(gateway)["containers"]
    settings = SPECS["api-gateway"].load_settings(**pod_environment(objects, c, tmp_path / "api-gateway"))
    route = match(compile_routes(settings), STREAMS["api"][0])
    assert route and route.stream and route.upstream == "event-streaming", route
    for prefix, (path, service) in STREAMS.items():
        for where, streamed in ((path, True), (path + "/more", True), ("/", False), ("/api/v1/events", False)):
            (found,) = edge_matches(objects, hosts[prefix], where)
            backend, applied = found
            assert backend == service, (prefix, where, backend)
            if name.endswith("ingress-nginx"):
                read_timeout = applied.get(NGINX + "proxy-read-timeout")
                send_timeout = applied.get(NGINX + "proxy-send-timeout")
                if streamed:
                    assert applied.get(NGINX + "proxy-buffering") == "off", (prefix, where)
                    assert int(read_timeout) > max(60, 4 * heartbeat), (prefix, where, read_timeout)
                    assert int(send_timeout) >= int(read_timeout), (prefix, where, send_timeout)
                else:
                    assert read_timeout is None and NGINX + "proxy-buffering" not in applied, (prefix, where)
                    assert send_timeout is None, (prefix, where)
            else:
                assert applied == ({"request": "0s"} if streamed else {}), (prefix, where, applied)


@pytest.mark.parametrize("name", ENV_OVERLAYS)
def test_billing_talks_to_stripe_itself_in_every_cluster(k8s_render, name, tmp_path):
    """Only the compose stack points billing at a Stripe fake. Staging and production set no
    STRIPE_API_BASE (Stripe is the default there); development names Stripe, as billing's own
    development default is the fake `prog up` runs beside it, which no pod runs. Either way the
    settings the pods load address api.stripe.com."""
    objects = k8s_render(f"overlays/{name}")
    assert config(objects).get("STRIPE_API_BASE") == ("https://api.stripe.com" if name == "development" else None)
    billing = next(w for w in workloads(objects) if w["metadata"]["name"] == "billing-service")
    (c,) = pod_spec(billing)["containers"]
    assert "STRIPE_API_BASE" not in {e["name"] for e in c["env"]}
    env = pod_environment(objects, c, tmp_path / "billing-service")
    settings = SPECS["billing-service"].load_settings(**env)
    assert settings.stripe_api_address == "https://api.stripe.com"


@pytest.mark.parametrize("name", ENV_OVERLAYS)
def test_the_console_reaches_the_gateway_every_services_readiness_and_prometheus(k8s_render, name, tmp_path,
                                                                                  settings_from_environment):
    """The console's settings, loaded from its pod's environment: the gateway's Service (its API
    port), for every registered service an address whose /readiness answers (each other service's
    ops Service, which includes unready pods; its own ops port over loopback), and Prometheus;
    the NetworkPolicies open each of those paths at both ends."""
    objects = k8s_render(f"overlays/{name}")
    console = next(w for w in workloads(objects) if w["metadata"]["name"] == CONSOLE)
    (c,) = pod_spec(console)["containers"]
    settings = settings_from_environment(CONSOLE, pod_environment(objects, c, tmp_path / CONSOLE))
    egress = paths(objects, pod_labels(console), "egress")

    def ingress_of(service: str) -> set[tuple[str, str]]:
        workload = next(w for w in workloads(objects) if w["metadata"]["name"] == service)
        return paths(objects, pod_labels(workload), "ingress")

    api = urlsplit(settings.api_gateway_url)
    assert api.scheme == "http" and reaches_api_port(objects, api.hostname, api.port or 80), settings.api_gateway_url
    gateway_port = str(SERVICES["api-gateway"])
    assert ("pod:api-gateway", gateway_port) in egress and (f"pod:{CONSOLE}", gateway_port) in ingress_of("api-gateway")
    # The keys it verifies operators' tokens with: through the gateway's public route to the issuer's.
    from prognetwork.gateway.proxy import compile_routes, match, upstream_url

    (issuer,) = [spec for spec in SPECS.values() if "JWT_SIGNING_KEYS" in spec.secrets]
    assert settings.jwks_url == f"{settings.api_gateway_url}/.well-known/jwks.json"
    gateway = next(w for w in workloads(objects) if w["metadata"]["name"] == "api-gateway")
    (gc,) = pod_spec(gateway)["containers"]
    gateway_settings = settings_from_environment("api-gateway", pod_environment(objects, gc, tmp_path / "api-gateway"))
    route = match(compile_routes(gateway_settings), "/.well-known/jwks.json")
    assert route and route.public and route.upstream == issuer.name, route
    assert str(upstream_url(route, "/.well-known/jwks.json", b"")) == f"http://{issuer.name}/.well-known/jwks.json"

    assert set(settings.health_urls) == set(SPECS)
    for service, url in settings.health_urls.items():
        target = urlsplit(url)
        assert target.scheme == "http" and target.path in ("", "/"), url
        if service == CONSOLE:
            # Its own pod: loopback, which no NetworkPolicy governs.
            assert (target.hostname, target.port) == ("127.0.0.1", OPS_PORTS[CONSOLE]), url
            continue
        ops = of(objects, "Service", target.hostname)
        assert ops["spec"].get("publishNotReadyAddresses") is True, f"{url}: unready pods would be hidden"
        (port,) = [p for p in ops["spec"]["ports"] if p["port"] == target.port]
        (workload,) = [w for w in workloads(objects) if matches(ops["spec"]["selector"], pod_labels(w))]
        assert workload["metadata"]["name"] == service, url
        (wc,) = pod_spec(workload)["containers"]
        assert container_port(wc, port["targetPort"]) == OPS_PORTS[service], url
        assert (f"pod:{service}", str(OPS_PORTS[service])) in egress, url
        assert (f"pod:{CONSOLE}", "ops") in ingress_of(service), url

    # The Prometheus the canary analysis asks, in namespace `monitoring`.
    (metric,) = of(objects, "AnalysisTemplate", "error-rate")["spec"]["metrics"]
    assert settings.prometheus_url == metric["provider"]["prometheus"]["address"]
    prometheus = urlsplit(settings.prometheus_url)
    assert prometheus.hostname == "prometheus.monitoring.svc"
    assert ("ns:monitoring/prometheus", str(prometheus.port)) in egress


# ---- the audit log's retention ---------------------------------------------------------

RETENTION = "audit-retention"
# How many days each environment keeps an audit record (AUDIT_RETENTION_DAYS in prog-config).
RETENTION_DAYS = {"development": 30, "staging": 90, "production": 365}


def retention_job(objects) -> tuple[dict, dict]:
    """The purge's CronJob and its one container."""
    cron = of(objects, "CronJob", RETENTION)
    (c,) = pod_spec(cron)["containers"]
    return cron, c


def test_audit_retention_runs_daily_one_run_at_a_time(rendered):
    _, objects = rendered
    cron, c = retention_job(objects)
    spec = cron["spec"]
    minute, hour, *every_day = spec["schedule"].split()
    assert every_day == ["*", "*", "*"] and 0 <= int(minute) < 60 and 0 <= int(hour) < 24, spec["schedule"]
    assert spec["timeZone"] == "Etc/UTC" and spec.get("suspend") is not True
    # Purges queue on the same lock: never two at once. A missed run starts late rather than
    # never, but always before the next day's is due.
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < 86400
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert 1 <= job["backoffLimit"] <= 6
    assert 0 < job["activeDeadlineSeconds"] < 86400, "a stuck run ends (its transaction rolls back) before the next"
    assert job["ttlSecondsAfterFinished"] >= 86400, "a failed run's pod log outlives the night it failed in"
    assert pod_spec(cron)["restartPolicy"] == "Never"
    # Exit 1 (the log does not verify) ends the Job; an evicted or reclaimed pod costs no retry.
    rules = job["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": c["name"], "operator": "In", "values": [1]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules


def test_audit_retention_purges_with_the_user_service_image_key_and_config(rendered):
    """`prog audit purge`, with the user service's image, security context and signing key (the
    purge signs a checkpoint verifiers check against its JWKS), prog-config and DATABASE_URL; no
    Redis, no ports, nothing scrapes it and no Service selects it."""
    _, objects = rendered
    cron, c = retention_job(objects)
    users = of(objects, "Rollout", "user-service")
    (uc,) = pod_spec(users)["containers"]
    assert c["command"] == ["prog", "audit", "purge"] and "args" not in c, "AUDIT_RETENTION_DAYS says how old"
    assert c["image"] == uc["image"]
    assert c["envFrom"] == uc["envFrom"]
    assert c["env"] == [e for e in uc["env"] if e["name"] == "DATABASE_URL"]
    assert "ports" not in c and "annotations" not in pod_template(cron)["metadata"]
    assert pod_spec(cron)["securityContext"] == pod_spec(users)["securityContext"]
    assert c["securityContext"] == uc["securityContext"]

    def secret_files(workload: dict, container: dict) -> tuple[list[dict], list[dict]]:
        volumes = [v for v in pod_spec(workload)["volumes"] if "secret" in v]
        mounts = [m for m in container["volumeMounts"] if m["name"] in {v["name"] for v in volumes}]
        return volumes, mounts

    volumes, mounts = secret_files(cron, c)
    assert (volumes, mounts) == secret_files(users, uc)
    assert [i["key"] for v in volumes for i in v["secret"]["items"]] == ["JWT_SIGNING_KEYS"]
    assert [m["mountPath"] for m in mounts] == [config(objects)["SECRETS_DIR"]]
    assert pod_spec(cron)["serviceAccountName"] == RETENTION and pod_spec(cron)["automountServiceAccountToken"] is False
    assert of(objects, "ServiceAccount", RETENTION)["automountServiceAccountToken"] is False
    # A policy of its own (test_network_policies_allow_exactly_the_architecture checks the paths).
    policy = of(objects, "NetworkPolicy", RETENTION)["spec"]
    assert matches(policy["podSelector"], pod_labels(cron))
    assert policy["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in policy


@pytest.mark.parametrize("name", ENV_OVERLAYS)
def test_audit_retention_keeps_what_its_environment_says(k8s_render, name, tmp_path, settings_from_environment):
    """The user service's settings, loaded from the purge pod's environment: the retention its
    environment chose, and nothing `prog config check` would refuse for a user-service process
    that reaches PostgreSQL alone (it never opens Redis, which its NetworkPolicy closes)."""
    from prognetwork.users import audit_log

    objects = k8s_render(f"overlays/{name}")
    _, c = retention_job(objects)
    env = pod_environment(objects, c, tmp_path / RETENTION)
    assert env["PROG_ENV"] == name and "REDIS_URL" not in env
    settings = settings_from_environment("user-service", env)
    assert settings.audit_retention_days == RETENTION_DAYS[name]
    now = datetime.now(UTC)
    assert audit_log.retention_cutoff(settings, now) == now - timedelta(days=RETENTION_DAYS[name])
    spec = SPECS["user-service"]
    assert "postgres" in spec.needs and spec.secrets == ("JWT_SIGNING_KEYS",)
    assert settings.problems(spec.needs - {"redis"}, spec.secrets) == []
    if name != "development":
        # The check can fail: without the signing key it says so.
        (tmp_path / RETENTION / "JWT_SIGNING_KEYS").unlink()
        problems = settings_from_environment("user-service", env).problems(spec.needs - {"redis"}, spec.secrets)
        assert problems == ["secret JWT_SIGNING_KEYS is missing (set it in the environment or the secrets directory)"]


@pytest.mark.parametrize("name", ["staging", "production"])
def test_the_purge_starts_in_its_pods_environment(k8s_render, name, tmp_path):
    """`prog audit purge` run in the CronJob pod's own environment, PostgreSQL pointed at a port
    nothing listens on: the settings load, AUDIT_RETENTION_DAYS gives the cutoff and the mounted
    key loads, so it fails only at the database (exit 2). Without the retention it refuses to
    guess; without the key it fails before the database."""
    objects = k8s_render(f"overlays/{name}")
    _, c = retention_job(objects)
    env = pod_environment(objects, c, tmp_path / RETENTION)
    database = urlsplit(env["DATABASE_URL"])
    unreachable = database._replace(netloc=f"{database.username}:{database.password}@127.0.0.1:{free_port()}")
    env["DATABASE_URL"] = unreachable.geturl()
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}

    def purge(env: dict[str, str]) -> subprocess.CompletedProcess:
        # c["command"] is `prog audit purge`: the same entry point, from this interpreter.
        return subprocess.run([sys.executable, "-m", "prognetwork", *c["command"][1:]], env={**base, **env},
                              capture_output=True, text=True, timeout=60)

    result = purge(env)
    assert result.returncode == 2 and "cannot reach PostgreSQL" in result.stderr, result.stdout + result.stderr
    result = purge({k: v for k, v in env.items() if k != "AUDIT_RETENTION_DAYS"})
    assert result.returncode == 2 and "set AUDIT_RETENTION_DAYS" in result.stderr, result.stdout + result.stderr
    (tmp_path / RETENTION / "JWT_SIGNING_KEYS").unlink()
    result = purge(env)
    assert result.returncode == 1 and "JWT_SIGNING_KEYS" in result.stderr, result.stdout + result.stderr


# ---- production against staging ---------------------------------------------------------

def normalised(objects, env: str) -> dict:
    """The objects with every intended difference between environments blanked out."""
    out = {}
    for obj in copy.deepcopy(objects):
        meta = obj["metadata"]
        meta.pop("namespace", None)
        meta.get("labels", {}).pop("environment", None)
        name = meta["name"].replace(f"prog-{env}", "prog-ENV")
        if obj["kind"] == "ConfigMap":
            name = re.sub(r"-[a-z0-9]{10}$", "", name)  # kustomize's content hash
        meta["name"] = name
        spec = obj.get("spec", {})
        if obj["kind"] in WORKLOAD_KINDS:
            if obj["kind"] == "CronJob":
                spec["jobTemplate"]["metadata"]["labels"].pop("environment", None)
            template = pod_template(obj)
            template["metadata"]["labels"].pop("environment", None)
            pod = template["spec"]
            for key in ("tolerations", "affinity"):  # production's spot preference
                pod.pop(key, None)
            for c in pod["containers"]:
                c["image"] = c["image"].split(":")[0]
                c.pop("resources")
                for e in c.get("envFrom", ()):
                    e.get("configMapRef", {}).update(name="prog-config")
        if obj["kind"] == "ConfigMap":
            # AUDIT_RETENTION_DAYS: each environment keeps its audit records as long as it needs;
            # OTEL_TRACES_SAMPLER_ARG: production traces a share of its requests.
            for key in ("PROG_ENV", "APP_URL", "JWT_ISSUER", "EMAIL_FROM", "AUDIT_RETENTION_DAYS",
                        "OTEL_TRACES_SAMPLER_ARG"):
                obj["data"].pop(key)
            # The same plans; each environment's Stripe account has its own price ids.
            obj["data"]["BILLING_PLANS"] = [{**plan, "price_id": plan["price_id"] and "PRICE"}
                                            for plan in json.loads(obj["data"]["BILLING_PLANS"])]
        if obj["kind"] == "HorizontalPodAutoscaler":
            spec.pop("minReplicas"), spec.pop("maxReplicas")
        if obj["kind"] == "HTTPRoute":
            spec.pop("hostnames")
        if obj["kind"] == "Certificate":
            spec.pop("dnsNames")
        # Each environment's own Secrets Manager secret and the IAM role that may read it.
        if obj["kind"] == "ExternalSecret":
            for source in spec["dataFrom"]:
                source["extract"]["key"] = source["extract"]["key"].replace(f"/{env}/", "/ENV/")
        role = meta.get("annotations", {}).get("eks.amazonaws.com/role-arn")
        if role:
            meta["annotations"]["eks.amazonaws.com/role-arn"] = role.replace(f"-{env}-", "-ENV-")
        out[(obj["kind"], name)] = obj
    return out


def test_production_differs_from_staging_only_where_intended(k8s_render):
    staging = normalised(k8s_render("overlays/staging"), "staging")
    production = normalised(k8s_render("overlays/production"), "production")
    assert staging.keys() == production.keys()
    for key in staging:
        assert staging[key] == production[key], key
