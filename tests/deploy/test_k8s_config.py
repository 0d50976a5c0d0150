"""What a pod needs around it in every overlay: an address for every service its settings name,
network paths to the datastores (development runs them as pods), HSTS at the edge, and tracing
sent to the collector."""

from __future__ import annotations

import copy
import os
from urllib.parse import urlsplit

import pytest

from prognetwork.registry import services
from tests.helpers.k8s import K8S_OVERLAYS, matches, of
from tests.helpers.paths import ROOT

SPECS = services()
ENV_OVERLAYS = ["development", "staging", "production"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# The settings that name a URL the pod reaches itself: the datastores' come from the Secret.
FROM_SECRET = {"DATABASE_URL", "REDIS_URL"}
HSTS_MIN_AGE = 31536000  # a year: what browsers' preload lists ask for


def config(objects) -> dict[str, str]:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("prog-config")]
    return cm["data"]


def service_pods(objects):
    for w in objects:
        if w["kind"] in {"Deployment", "Rollout"} and w["metadata"]["name"] in SPECS:
            (c,) = w["spec"]["template"]["spec"]["containers"]
            yield w, c


def pod_env(objects, container) -> dict[str, str]:
    env = dict(config(objects))
    env.update({e["name"]: e["value"] for e in container.get("env", ()) if "value" in e})
    return env


def unreachable_urls(objects) -> list[str]:
    """Each URL a service's settings name that, in this render, still points at its development
    default on loopback (another service that is not in the pod), or at a host that is no Service of
    this namespace (names with a dot are another namespace's: monitoring's Prometheus)."""
    found = []
    service_names = {s["metadata"]["name"] for s in of(objects, "Service")}
    for workload, c in service_pods(objects):
        name = workload["metadata"]["name"]
        spec = SPECS[name]
        env = pod_env(objects, c)
        own_ports = {spec.port, spec.ops_port}
        for field in spec.settings.model_fields.values():
            alias = field.alias or ""
            if not alias.endswith("_URL") or alias in FROM_SECRET:
                continue
            value = env.get(alias, field.default)
            if not isinstance(value, str) or not value:
                continue
            url = urlsplit(value)
            if url.hostname in LOOPBACK:
                if url.port not in own_ports:
                    found.append(f"{name}: {alias}={value} (its development default) is unset")
            elif url.scheme == "http" and "." not in (url.hostname or "") and url.hostname not in service_names:
                found.append(f"{name}: {alias}={value} names no Service")
    return found


@pytest.mark.parametrize("overlay", K8S_OVERLAYS)
def test_every_service_url_a_pod_reads_is_set_to_a_service_here(k8s_render, overlay):
    assert unreachable_urls(k8s_render(f"overlays/{overlay}")) == []


def test_a_missing_service_url_is_named(k8s_render):
    """The development overlay once lacked NOTIFICATION_SERVICE_URL: the gateway's route to the
    outbox and the admin API's emails went to 127.0.0.1:3004 inside its own pod."""
    objects = copy.deepcopy(k8s_render("overlays/development"))
    del config(objects)["NOTIFICATION_SERVICE_URL"]
    problems = unreachable_urls(objects)
    assert any(p.startswith("api-gateway: NOTIFICATION_SERVICE_URL=http://127.0.0.1:3004") for p in problems), problems


# ---- network paths to the datastores ----------------------------------------------------------

def admitted(objects, pod: dict, direction: str, peer: dict, port: int) -> bool:
    """Whether the NetworkPolicies let `pod` (its labels) send to / take from `peer` (labels, same
    namespace) on `port`: unrestricted when no policy of that direction selects it."""
    policies = [p for p in of(objects, "NetworkPolicy")
                if direction.capitalize() in p["spec"]["policyTypes"] and matches(p["spec"]["podSelector"], pod)]
    if not policies:
        return True
    key = "to" if direction == "egress" else "from"
    for policy in policies:
        for rule in policy["spec"].get(direction, ()):
            ports = {p.get("port") for p in rule.get("ports", [{}])}
            peers = rule.get(key, [{}])
            if (None in ports or port in ports) and any(
                    "podSelector" in p and "namespaceSelector" not in p and matches(p["podSelector"], peer)
                    or p == {} for p in peers):
                return True
    return False


# The datastores' pods in development, labelled as their usual charts label them.
DATASTORE_PODS = {"postgres": ({"app.kubernetes.io/name": "postgresql"}, 5432),
                  "redis": ({"app.kubernetes.io/name": "redis"}, 6379)}


def datastore_paths_blocked(objects) -> list[str]:
    blocked = []
    for workload in objects:
        if workload["kind"] not in {"Deployment", "Rollout", "Job", "CronJob"}:
            continue
        name = workload["metadata"]["name"]
        spec = workload["spec"]
        labels = (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)["template"]["metadata"]["labels"]
        needs = SPECS[name].needs if name in SPECS else {"postgres"}  # the migration and the purge
        for need in needs:
            datastore, port = DATASTORE_PODS[need]
            if not admitted(objects, labels, "egress", datastore, port):
                blocked.append(f"{name} → {need}: no egress")
            if not admitted(objects, datastore, "ingress", labels, port):
                blocked.append(f"{name} → {need}: the {need} pod admits no ingress from it")
    return blocked


def test_in_development_every_pod_reaches_the_datastores_it_needs(k8s_render):
    objects = k8s_render("overlays/development")
    # The default deny covers the datastores' pods too.
    deny = of(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and "Ingress" in deny["policyTypes"]
    assert datastore_paths_blocked(objects) == []


def test_a_datastore_without_ingress_is_caught(k8s_render):
    """The overlay once opened only the egress side: the default deny still refused the connection
    at PostgreSQL's and Redis' pods."""
    objects = [o for o in k8s_render("overlays/development")
               if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"] in {"postgresql", "redis"})]
    blocked = datastore_paths_blocked(objects)
    assert "user-service → postgres: the postgres pod admits no ingress from it" in blocked, blocked
    assert "prog-migrate → postgres: the postgres pod admits no ingress from it" in blocked, blocked


# ---- HSTS at the edge ---------------------------------------------------------------------------

def hsts_max_age(value: str) -> int:
    directives = dict(part.strip().partition("=")[::2] for part in value.split(";"))
    assert "includeSubDomains" in directives, value
    return int(directives["max-age"])


@pytest.mark.parametrize("overlay", [o for o in K8S_OVERLAYS if not o.endswith("ingress-nginx")])
def test_every_https_answer_at_the_gateway_api_edge_carries_hsts(k8s_render, overlay):
    objects = k8s_render(f"overlays/{overlay}")
    https_routes = [r for r in of(objects, "HTTPRoute")
                    if any(ref.get("sectionName") == "https" for ref in r["spec"]["parentRefs"])]
    assert {r["metadata"]["name"] for r in https_routes} == {"api-gateway", "admin-client"}
    for route in https_routes:
        for rule in route["spec"]["rules"]:
            headers = [h for f in rule.get("filters", ()) if f["type"] == "ResponseHeaderModifier"
                       for h in f["responseHeaderModifier"].get("set", ())]
            (hsts,) = [h["value"] for h in headers if h["name"].lower() == "strict-transport-security"]
            assert hsts_max_age(hsts) >= HSTS_MIN_AGE, (route["metadata"]["name"], hsts)


def test_the_gateway_itself_sends_hsts():
    """Behind ingress-nginx (whose controller adds HSTS by default) and anywhere else, the gateway's
    own answers carry it too, with the value the Gateway API edge sets."""
    from prognetwork.gateway.proxy import SECURITY_HEADERS

    (value,) = [v.decode() for k, v in SECURITY_HEADERS if k == b"strict-transport-security"]
    assert hsts_max_age(value) >= HSTS_MIN_AGE


# ---- tracing ------------------------------------------------------------------------------------

COLLECTOR_CONFIG = ROOT / "deploy" / "monitoring" / "otel-collector" / "config.yaml"
SAMPLERS = {"always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio"}


@pytest.mark.parametrize("overlay", ENV_OVERLAYS)
def test_every_pod_sends_traces_to_the_collector(k8s_render, overlay, monkeypatch):
    """The variables kit/tracing.py and the OpenTelemetry SDK read, in each pod's environment: an
    OTLP/HTTP endpoint on the collector's HTTP receiver (the port its NetworkPolicy opens), and a
    sampler the SDK knows, which lets the services behind the gateway follow its decision."""
    import yaml

    from prognetwork.kit import tracing

    objects = k8s_render(f"overlays/{overlay}")
    collector = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    http_port = int(collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rpartition(":")[2])
    opened = {(rule_port["port"]) for p in of(objects, "NetworkPolicy") if p["metadata"]["name"] == "allow-otlp-export"
              for rule in p["spec"]["egress"] for rule_port in rule["ports"]}
    assert opened == {http_port}
    for workload, c in service_pods(objects):
        env = pod_env(objects, c)
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == (
            "http", "otel-collector.monitoring.svc", http_port), workload["metadata"]["name"]
        assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "http/protobuf"
        assert env["OTEL_TRACES_SAMPLER"] in SAMPLERS and env["OTEL_TRACES_SAMPLER"].startswith("parentbased_")
        assert 0 < float(env["OTEL_TRACES_SAMPLER_ARG"]) <= 1
        for key in [k for k in os.environ if k.startswith("OTEL_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("OTEL_"):
                monkeypatch.setenv(key, value)
        assert tracing.wanted(), workload["metadata"]["name"]
    if overlay == "production":
        assert float(config(objects)["OTEL_TRACES_SAMPLER_ARG"]) < 1, "production keeps a share of its traces"
