"""Every registered service is deployed, scraped, alerted on and shown, under its one name.

The services are those `prognetwork.registry.services()` finds (a package declaring a
`ServiceSpec`), never a list written here: a new service fails each test below until its entry
exists in every deploy artifact — its Dockerfile target, its compose service, its Kubernetes
workload, Service and scrape configuration in the base and every overlay, its Prometheus jobs,
the availability alerts that fire for it, and the dashboard panel that counts its instances.
Each check reads the artifact as its tool does (BuildKit's parser, Docker Compose, kubectl
kustomize, Prometheus' relabelling rules, promtool, amtool) and asserts on the outcome.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from prognetwork.kit.service import ServiceSpec
from prognetwork.registry import services
from tests.helpers.docker import RUNTIME_STAGE, compose_config, env_of, instruction, stages
from tests.helpers.k8s import K8S_OVERLAYS, matches, of, pod_labels, pod_spec
from tests.helpers.monitoring import (
    ALERTMANAGER_CONFIG,
    DASHBOARDS,
    PROMETHEUS,
    RULE_FILES,
    run,
)

SPECS = services()
NAMES = list(SPECS)
K8S_FOLDERS = ["base"] + [f"overlays/{name}" for name in K8S_OVERLAYS]
ECR_IMAGE = re.compile(r"123456789012\.dkr\.ecr\.us-east-1\.amazonaws\.com/prognetwork/(?P<name>[a-z0-9-]+)"
                       r"(:[\w.-]+)?(@sha256:[0-9a-f]{64})?")
AVAILABILITY_ALERTS = ("ServiceDown", "ServiceAbsent", "InstanceDown")


def test_the_registry_finds_every_service_package():
    # The check below is only as good as the list it walks: the six services there are today.
    assert {"api-gateway", "user-service", "notification-service", "event-streaming", "billing-service",
            "admin-client"} <= set(SPECS)
    for name, spec in SPECS.items():
        assert spec.name == name and re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name), name


@pytest.mark.parametrize("name", NAMES)
def test_has_a_port_and_an_ops_port(name):
    spec = SPECS[name]
    assert isinstance(spec.port, int) and 1024 <= spec.port < 65536, spec.port
    assert isinstance(spec.ops_port, int) and 1024 <= spec.ops_port < 65536, spec.ops_port
    assert spec.ops_port != spec.port


# --- images and the compose stack --------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_has_a_docker_target_of_its_name_that_serves_it(name):
    spec = SPECS[name]
    found = stages()
    assert name in found, f"deploy/docker/Dockerfile has no target {name!r}"
    commands = found[name]
    assert commands[0].value[0] == RUNTIME_STAGE, f"target {name} is not built FROM the runtime stage"
    cmd = instruction(commands, "CMD")
    assert cmd.json and list(cmd.value) == ["prog", "serve", name], cmd.original
    env = env_of(commands)
    assert (env.get("PORT"), env.get("OPS_PORT")) == (str(spec.port), str(spec.ops_port))


@pytest.mark.parametrize("name", NAMES)
def test_has_a_compose_service_of_its_name_that_serves_it(name):
    spec = SPECS[name]
    composed = compose_config()["services"]
    assert name in composed, f"deploy/docker/compose.yaml has no service {name!r}"
    svc = composed[name]
    assert svc["build"]["target"] == name
    assert svc["command"][:3] == ["prog", "serve", name]
    assert (svc["environment"]["PORT"], svc["environment"]["OPS_PORT"]) == (str(spec.port), str(spec.ops_port))


# --- Kubernetes --------------------------------------------------------------------------


def workload_of(objects: list[dict], name: str) -> dict:
    found = [o for o in objects if o["kind"] in {"Deployment", "Rollout"} and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one Deployment or Rollout named {name}, found {len(found)}"
    return found[0]


def container_port(container: dict, port: int | str) -> int:
    """A probe's or Service's port, by name or number, as the container's port number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


@pytest.mark.parametrize("folder", K8S_FOLDERS)
@pytest.mark.parametrize("name", NAMES)
def test_has_a_kubernetes_workload_probed_on_its_ops_port(k8s_render, folder, name):
    spec = SPECS[name]
    workload = workload_of(k8s_render(folder), name)
    assert workload["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
    assert pod_labels(workload)["app.kubernetes.io/name"] == name
    (c,) = pod_spec(workload)["containers"]
    image = ECR_IMAGE.fullmatch(c["image"])
    # The image of its name runs `prog serve <name>` (its Dockerfile target's CMD, checked above).
    assert image and image.group("name") == name and "command" not in c and "args" not in c, c["image"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env.get("PORT"), env.get("OPS_PORT")) == (str(spec.port), str(spec.ops_port))
    assert {p["containerPort"] for p in c["ports"]} == {spec.port, spec.ops_port}
    for probe, path in (("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/readiness")):
        get = c[probe]["httpGet"]
        assert (get["path"], container_port(c, get["port"])) == (path, spec.ops_port), probe


@pytest.mark.parametrize("folder", K8S_FOLDERS)
@pytest.mark.parametrize("name", NAMES)
def test_has_a_kubernetes_service_of_its_name_on_its_api_port(k8s_render, folder, name):
    objects = k8s_render(folder)
    workload = workload_of(objects, name)
    service = of(objects, "Service", name)
    assert matches(service["spec"]["selector"], pod_labels(workload))
    (c,) = pod_spec(workload)["containers"]
    assert [container_port(c, p["targetPort"]) for p in service["spec"]["ports"]] == [SPECS[name].port]


def relabel(labels: dict[str, str], rules: list[dict]) -> dict[str, str] | None:
    """Prometheus' relabelling (replace, keep, drop) of one target; None when it is dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        assert action in {"replace", "keep", "drop"}, f"relabel action {action} not modelled here"
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule.get("source_labels", []))
        found = re.fullmatch(rule.get("regex", "(.*)"), value)  # Prometheus anchors every regex
        if action == "keep" and not found or action == "drop" and found:
            return None
        if action == "replace" and found:
            replacement = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            labels[rule["target_label"]] = found.expand(replacement)
    return labels


def discovered(pod: dict, name: str, ip: str) -> dict[str, str]:
    """The target labels Kubernetes pod discovery gives a running pod of this template."""
    def sanitised(key: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", key)

    meta = pod["spec"]["template"]["metadata"]
    (c,) = pod_spec(pod)["containers"]
    labels = {
        "__address__": f"{ip}:{c['ports'][0]['containerPort']}", "__metrics_path__": "/metrics",
        "__meta_kubernetes_namespace": pod["metadata"].get("namespace", "default"),
        "__meta_kubernetes_pod_name": f"{name}-0", "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": "Running",
    }
    labels |= {f"__meta_kubernetes_pod_label_{sanitised(k)}": v for k, v in meta.get("labels", {}).items()}
    labels |= {f"__meta_kubernetes_pod_annotation_{sanitised(k)}": v for k, v in meta.get("annotations", {}).items()}
    return labels


@pytest.mark.parametrize("folder", K8S_FOLDERS)
@pytest.mark.parametrize("name", NAMES)
def test_its_pods_are_scraped_on_the_ops_port_under_its_name(k8s_render, folder, name):
    spec = SPECS[name]
    objects = k8s_render(folder)
    workload = workload_of(objects, name)
    (c,) = pod_spec(workload)["containers"]
    # prometheus.yml's discovery keeps the pod, scrapes its ops port and names the job after it.
    jobs = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [job for job in jobs if job["job_name"] == "kubernetes-pods"]
    target = relabel(discovered(workload, name, "10.1.2.3"), job["relabel_configs"])
    assert target is not None, f"prometheus.yml drops the pods of {name}"
    assert (target["job"], target["__address__"], target["__metrics_path__"]) == (
        name, f"10.1.2.3:{spec.ops_port}", "/metrics")
    # The Prometheus Operator's PodMonitor: the same port, the same job.
    monitors = [m for m in of(objects, "PodMonitor") if matches(m["spec"]["selector"], pod_labels(workload))]
    assert len(monitors) == 1, f"{len(monitors)} PodMonitors select the pods of {name}"
    monitor = monitors[0]["spec"]
    assert pod_labels(workload)[monitor["jobLabel"]] == name
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert (container_port(c, endpoint["port"]), endpoint["path"]) == (spec.ops_port, "/metrics")


# --- Prometheus, alerts, dashboards ------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_has_a_local_scrape_job_of_its_name_on_its_ops_port(name):
    # `prog up --with-monitoring` keeps the jobs named as the services it starts.
    config = yaml.safe_load((PROMETHEUS / "local.yml").read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == name]
    assert len(jobs) == 1, f"local.yml has {len(jobs)} jobs named {name}"
    assert jobs[0]["static_configs"] == [{"targets": [f"127.0.0.1:{SPECS[name].ops_port}"]}]
    assert jobs[0].get("metrics_path", "/metrics") == "/metrics"


def up_series(spec: ServiceSpec, values: str, instance: str = "a") -> dict:
    return {"series": f'up{{job="{spec.name}", instance="{instance}:{spec.ops_port}"}}', "values": values}


def firing(alertname: str, eval_time: str, expected: list[str]) -> dict:
    """promtool: the services `alertname` fires for at `eval_time`, exactly."""
    return {"expr": f'count by (service) (ALERTS{{alertname="{alertname}", alertstate="firing"}})',
            "eval_time": eval_time, "exp_samples": [{"labels": f'{{service="{s}"}}', "value": 1} for s in expected]}


def promtool_test(tmp_path: Path, rule_files: list[Path], tests: list[dict]) -> None:
    path = tmp_path / "registry.test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(p) for p in rule_files], "evaluation_interval": "1m",
                                    "tests": tests}))
    result = run("promtool", "test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_availability_alerts_fire_for_it(monitoring_tools, tmp_path, name):
    """The real rules: ServiceDown when no instance answers, InstanceDown when one of two does
    not, ServiceAbsent when it has no target at all; each for this service alone."""
    spec = SPECS[name]
    others = [up_series(s, "1x10") for s in SPECS.values() if s.name != name]
    promtool_test(tmp_path, RULE_FILES, [
        {"name": f"{name}: every instance down", "interval": "1m",
         "input_series": others + [up_series(spec, "0x10", "a"), up_series(spec, "0x10", "b")],
         "promql_expr_test": [firing("ServiceDown", "3m", [name])]},
        {"name": f"{name}: one instance of two down", "interval": "1m",
         "input_series": others + [up_series(spec, "0x10", "a"), up_series(spec, "1x10", "b")],
         "promql_expr_test": [firing("InstanceDown", "6m", [name]), firing("ServiceDown", "6m", [])]},
        {"name": f"{name}: no target at all", "interval": "1m", "input_series": others,
         "promql_expr_test": [firing("ServiceAbsent", "6m", [name])]},
    ])


def test_no_availability_alert_fires_while_every_service_answers(monitoring_tools, tmp_path):
    # ServiceAbsent for a name no service bears (a renamed or removed one) would fire here.
    promtool_test(tmp_path, RULE_FILES, [
        {"name": "every registered service up", "interval": "1m",
         "input_series": [up_series(s, "1x10") for s in SPECS.values()],
         "promql_expr_test": [firing(alert, "10m", []) for alert in AVAILABILITY_ALERTS]},
    ])


@pytest.mark.parametrize("name", NAMES)
def test_its_pages_reach_the_pager(monitoring_tools, name):
    result = run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                 "--verify.receivers=pagerduty-and-slack", "severity=critical", "alertname=ServiceDown",
                 f"service={name}")
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_panels() -> list[tuple[str, str, str]]:
    return [(path.name, panel["title"], target["expr"])
            for path in DASHBOARDS for panel in json.loads(path.read_text())["panels"]
            for target in panel.get("targets", [])]


def test_every_dashboard_matcher_that_lists_services_lists_every_one():
    """A panel that names services (`job=~"a|b"`, `service=~"a|b"`) must not leave one out."""
    listing = [(dashboard, title, values) for dashboard, title, expr in dashboard_panels()
               for values in re.findall(r'\b(?:job|service)=~"([^"]*\|[^"]*)"', expr)]
    for dashboard, title, values in listing:
        missing = [name for name in NAMES if not re.fullmatch(values, name)]
        assert not missing, f"{dashboard} / {title}: {values!r} leaves out {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_a_dashboard_panel_shows_its_instances(monitoring_tools, tmp_path, name):
    """Every dashboard query, evaluated by Prometheus' engine over this service's `up` alone:
    some panel shows it, by its name, and nothing else."""
    spec = SPECS[name]
    recorded = [{"record": f"dashboard:panel_{i}", "expr": expr} for i, (_, _, expr) in enumerate(dashboard_panels())]
    rules = tmp_path / "dashboards.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": recorded}]}))
    promtool_test(tmp_path, [rules], [
        {"name": f"{name}: its instances on a dashboard", "interval": "1m",
         "input_series": [up_series(spec, "1x10", "a"), up_series(spec, "1x10", "b")],
         "promql_expr_test": [{"expr": 'count by (service) ({__name__=~"dashboard:panel_.+"})', "eval_time": "5m",
                               "exp_samples": [{"labels": f'{{service="{name}"}}', "value": 1}]}]},
    ])
