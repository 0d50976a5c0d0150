"""Policies over the rendered manifests: what every workload must have, and what must hold
between objects (selectors, autoscalers, budgets, network paths, environments)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest

from prognetwork.registry import services
from tests.helpers.k8s import K8S_DIR, K8S_OVERLAYS, matches, of, pod_labels, pod_spec

# Every registered service, by the one name its Kubernetes objects bear too.
SPECS = services()
SERVICES = {name: spec.port for name, spec in SPECS.items()}
OPS_PORTS = {name: spec.ops_port for name, spec in SPECS.items()}
ROLLOUTS = {"user-service", "api-gateway"}
# The services behind the gateway that verify access tokens themselves, against the issuer's keys.
TOKEN_VERIFIERS = {"event-streaming", "billing-service"}
ENV_OVERLAYS = ["development", "staging", "production"]
WORKLOAD_KINDS = {"Deployment", "Rollout", "Job"}
ERROR_RATE_QUERY = (
    'sum by (service) (rate(errors_total{service="{{args.service}}"}[5m])) / '
    '(sum by (service) (rate(requests_total{service="{{args.service}}"}[5m])) > 0)'
)
HOSTS = {
    "development": {"api.dev.prognetwork.com", "app.dev.prognetwork.com"},
    "staging": {"api.staging.prognetwork.com", "app.staging.prognetwork.com"},
    "production": {"api.prognetwork.com", "app.prognetwork.com"},
}


def workloads(objects):
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


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
        assert canary["analysis"]["args"] == [{"name": "service", "value": r["metadata"]["name"]}]


def test_rollback_analysis_uses_the_alerting_error_rate(rendered):
    _, objects = rendered
    (metric,) = of(objects, "AnalysisTemplate", "error-rate")["spec"]["metrics"]
    assert metric["provider"]["prometheus"] == {"address": "http://prometheus.monitoring.svc:9090",
                                               "query": ERROR_RATE_QUERY}
    assert metric["successCondition"] == "len(result) == 0 || result[0] <= 0.05"
    sources = "".join(p.read_text() for p in K8S_DIR.rglob("*.yaml"))
    assert sources.count("rate(errors_total") == 1, "the query is written in one place"


def test_services_select_exactly_their_pods(rendered):
    _, objects = rendered
    for service in of(objects, "Service"):
        selector = service["spec"]["selector"]
        selected = [w["metadata"]["name"] for w in workloads(objects) if matches(selector, pod_labels(w))]
        assert selected == [service["metadata"]["name"]], f"Service {service['metadata']['name']} selects {selected}"
        assert service["spec"]["type"] == "ClusterIP"
        # The API port only: nothing routed through a Service (the edge included) reaches `ops`.
        assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    assert {s["metadata"]["name"] for s in of(objects, "Service")} == set(SERVICES)


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


def test_every_workload_has_a_disruption_budget(rendered):
    _, objects = rendered
    budgets = of(objects, "PodDisruptionBudget")
    for name in SERVICES:
        workload = next(o for o in workloads(objects) if o["metadata"]["name"] == name)
        covering = [b for b in budgets if matches(b["spec"]["selector"], pod_labels(workload))]
        assert len(covering) == 1 and covering[0]["spec"] == {
            "maxUnavailable": 1, "selector": covering[0]["spec"]["selector"]}, name


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
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"


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
DATA = "cidr:10.0.0.0/16"
EXPECTED_PATHS = {
    "api-gateway": {
        "ingress": {("ns:envoy-gateway-system,ingress-nginx/*", "8000")} | PROMETHEUS,
        "egress": DNS | {("pod:user-service", "3007"), ("pod:event-streaming", "8001"), ("pod:billing-service", "3003"),
                         (DATA, "6379")},
    },
    "user-service": {
        # The streaming and billing services fetch the key set to verify tokens themselves.
        "ingress": {("pod:api-gateway", "3007"), ("pod:event-streaming", "3007"), ("pod:billing-service", "3007")}
        | PROMETHEUS,
        "egress": DNS | {(DATA, "5432"), (DATA, "6379")},
    },
    "notification-service": {
        "ingress": PROMETHEUS,
        "egress": DNS | {(DATA, "5432"), ("internet", "443")},
    },
    "event-streaming": {
        "ingress": {("pod:api-gateway", "8001")} | PROMETHEUS,
        "egress": DNS | {(DATA, "5432"), (DATA, "6379"), ("pod:user-service", "3007")},
    },
    "billing-service": {
        # Stripe's webhooks come through the gateway like every client's request; Stripe's API is
        # public HTTPS.
        "ingress": {("pod:api-gateway", "3003")} | PROMETHEUS,
        "egress": DNS | {(DATA, "5432"), (DATA, "6379"), ("pod:user-service", "3007"), ("internet", "443")},
    },
    "prog-migrate": {"ingress": set(), "egress": DNS | {(DATA, "5432")}},
}
DEV_DATASTORES = {("pod:postgresql", "5432"), ("pod:redis", "6379")}
# Development also routes /api/v1/dev (the email outbox) from the gateway to the notification service.
DEV_OUTBOX = {"api-gateway": ("egress", ("pod:notification-service", "3004")),
              "notification-service": ("ingress", ("pod:api-gateway", "3004"))}


def test_network_policies_allow_exactly_the_architecture(rendered):
    name, objects = rendered
    deny = of(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for workload in workloads(objects):
        labels = pod_labels(workload)
        expected = copy.deepcopy(EXPECTED_PATHS[workload["metadata"]["name"]])
        if name == "development":
            expected["egress"] |= DEV_DATASTORES
            if workload["metadata"]["name"] in DEV_OUTBOX:
                direction, path = DEV_OUTBOX[workload["metadata"]["name"]]
                expected[direction].add(path)
        for direction in ("ingress", "egress"):
            assert paths(objects, labels, direction) == expected[direction], (workload["metadata"]["name"], direction)
    # Public HTTPS (SendGrid, Stripe) never reaches the VPC, the cluster or instance metadata.
    for policy in of(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("egress", ()):
            for to in rule["to"]:
                if to.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
                        to["ipBlock"]["except"]), policy["metadata"]["name"]


def test_only_prometheus_reaches_the_ops_port(rendered):
    _, objects = rendered
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        if name not in SERVICES:
            continue
        ingress = paths(objects, pod_labels(workload), "ingress")
        assert {(who, port) for who, port in ingress if port in ("ops", str(OPS_PORTS[name]))} == PROMETHEUS, name
        assert {port for who, port in ingress - PROMETHEUS} <= {str(SERVICES[name])}, name


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
def test_the_gateway_and_the_verifiers_reach_services_by_their_names(k8s_render, name, tmp_path):
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
        settings = SPECS[app].load_settings(**pod_environment(objects, c, tmp_path / app))
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
    assert external["spec"]["secretStoreRef"] == {"kind": "ClusterSecretStore", "name": "aws-secrets-manager"}
    keys = {d["secretKey"] for d in external["spec"]["data"]}
    # Every secret a service reads, and the datastore URLs.
    assert keys >= {"DATABASE_URL", "REDIS_URL", "JWT_SIGNING_KEYS", "SENDGRID_API_KEY", "STRIPE_SECRET_KEY",
                    "STRIPE_WEBHOOK_SECRET"} | {name for spec in SPECS.values() for name in spec.secrets}
    assert all(d["remoteRef"] == {"key": "prognetwork/app", "property": d["secretKey"]} for d in external["spec"]["data"])


def test_secret_files_are_mounted_per_service(rendered):
    _, objects = rendered
    files = {"user-service": ["JWT_SIGNING_KEYS"], "notification-service": ["SENDGRID_API_KEY"], "api-gateway": [],
             "event-streaming": [], "billing-service": ["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"]}
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


def test_fault_tolerant_workers_prefer_spot_in_production_only(env):
    name, objects = env
    for workload in workloads(objects):
        spec = pod_spec(workload)
        spot = workload["metadata"]["name"] == "notification-service" and name == "production"
        assert "nodeSelector" not in spec, "a hard node choice leaves no on-demand fallback"
        tolerations = spec.get("tolerations", [])
        assert (tolerations == [{"key": "spot-instance", "operator": "Equal", "value": "true",
                                 "effect": "NoSchedule"}]) == spot, workload["metadata"]["name"]
        if spot:
            (preferred,) = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            assert preferred["preference"]["matchExpressions"] == [
                {"key": "node-type", "operator": "In", "values": ["spot"]}]
            assert spec["terminationGracePeriodSeconds"] < 120, "inside the spot interruption notice"
        constraints = {t["topologyKey"] for t in spec.get("topologySpreadConstraints", ())}
        if workload["kind"] != "Job":
            assert "topology.kubernetes.io/zone" in constraints


def test_external_routes(rendered):
    name, objects = rendered
    env = name.split("-")[0]
    services = {s["metadata"]["name"] for s in of(objects, "Service")}
    # `admin-client` is the admin web client's Service, which arrives with that service.
    known = services | {"admin-client"}
    routes = of(objects, "HTTPRoute")
    ingresses = of(objects, "Ingress")
    if name.endswith("ingress-nginx"):
        assert not routes and not of(objects, "Gateway")
        (ing,) = ingresses
        spec = ing["spec"]
        assert spec["ingressClassName"] == "nginx" and "kubernetes.io/ingress.class" not in ing["metadata"]["annotations"]
        assert not any("rewrite-target" in a or "use-regex" in a for a in ing["metadata"]["annotations"])
        assert ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
        by_host = {r["host"]: r["http"]["paths"][0]["backend"]["service"]["name"] for r in spec["rules"]}
        assert set(spec["tls"][0]["hosts"]) == set(by_host) == HOSTS[env]
        assert {h.split(".")[0]: s for h, s in by_host.items()} == {"api": "api-gateway", "app": "admin-client"}
        return
    assert not ingresses
    gateway = of(objects, "Gateway", "prognetwork")
    https = next(x for x in gateway["spec"]["listeners"] if x["protocol"] == "HTTPS")
    (cert,) = of(objects, "Certificate")
    assert https["tls"]["certificateRefs"][0]["name"] == cert["spec"]["secretName"]
    assert set(cert["spec"]["dnsNames"]) == HOSTS[env]
    served = {}
    for route in routes:
        assert all(p["name"] == "prognetwork" for p in route["spec"]["parentRefs"])
        for rule in route["spec"]["rules"]:
            for backend in rule.get("backendRefs", ()):
                assert backend["name"] in known and backend["port"] == 80
                served.update({h.split(".")[0]: backend["name"] for h in route["spec"]["hostnames"]})
    assert served == {"api": "api-gateway", "app": "admin-client"}
    redirect = of(objects, "HTTPRoute", "https-redirect")
    assert set(redirect["spec"]["hostnames"]) == HOSTS[env]
    assert redirect["spec"]["parentRefs"][0]["sectionName"] == "http"


STRIPE_WEBHOOK_PATH = "/api/v1/billing/webhooks/stripe"  # the public address Stripe's account is given


def prefix_matches(prefix: str, path: str) -> bool:
    """Gateway API PathPrefix and Ingress Prefix: a match on whole path segments."""
    prefix = prefix.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def edge_backends(objects, host: str, path: str) -> set[str]:
    """The Services an HTTPS request for `host` and `path` is sent to from outside the cluster:
    by the HTTPRoutes on the Gateway's HTTPS listener, or by the Ingress rules. In both the
    longest matching prefix wins (no route here matches on headers, methods or regexes)."""
    found: list[tuple[int, str]] = []
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
                    found += [(len(where["value"]), backend["name"]) for backend in rule.get("backendRefs", ())]
    for ingress in of(objects, "Ingress"):
        assert "defaultBackend" not in ingress["spec"]
        for rule in ingress["spec"]["rules"]:
            if rule.get("host", host) != host:
                continue
            for where in rule["http"]["paths"]:
                assert where["pathType"] in {"Prefix", "Exact"}, where
                if where["path"] == path or where["pathType"] == "Prefix" and prefix_matches(where["path"], path):
                    found.append((len(where["path"]), where["backend"]["service"]["name"]))
    longest = max((length for length, _ in found), default=0)
    return {name for length, name in found if length == longest}


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
             for backend in rule.get("backendRefs", ())}
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
            template = spec["template"]
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
            for key in ("PROG_ENV", "APP_URL", "JWT_ISSUER", "EMAIL_FROM"):
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
        out[(obj["kind"], name)] = obj
    return out


def test_production_differs_from_staging_only_where_intended(k8s_render):
    staging = normalised(k8s_render("overlays/staging"), "staging")
    production = normalised(k8s_render("overlays/production"), "production")
    assert staging.keys() == production.keys()
    for key in staging:
        assert staging[key] == production[key], key
