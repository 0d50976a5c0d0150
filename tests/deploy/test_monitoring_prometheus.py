"""Prometheus configs, alert and recording rules, and the Grafana dashboards' queries, checked with promtool."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from prognetwork.registry import services
from tests.helpers.k8s import K8S_DIR
from tests.helpers.monitoring import (
    DASHBOARDS,
    MONITORING,
    PROMETHEUS,
    RULE_FILES,
    RULE_TESTS,
    alerts,
    dashboard_exprs,
    load_rules,
    run,
    squeeze,
)
from tests.helpers.paths import ROOT

# A service's job is its name: local.yml's job, and the pods' app name in Kubernetes.
SERVICE_JOBS = set(services())
ERROR_RATIO = (
    "sum by (namespace, service) (rate(errors_total[5m])) / (sum by (namespace, service) (rate(requests_total[5m])) > 0)"
)
# Always firing by design (the dead man's switch): never silent, and heard by the heartbeat alone.
HEARTBEATS = {"Watchdog"}
SLO_WINDOWS = ("5m", "30m", "1h", "6h", "3d")


# --- configs -------------------------------------------------------------------------------

def test_local_config_and_its_rule_files_are_valid(monitoring_tools):
    # Run from the repository root as `prog up --with-monitoring` will: rule_files resolve
    # against the config's directory, so promtool finding all of them proves the paths work.
    result = run("promtool", "check", "config", "deploy/monitoring/prometheus/local.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULE_FILES:
        assert f"rules/{path.name}" in result.stdout


def test_kubernetes_config_is_valid(monitoring_tools, tmp_path):
    result = run("promtool", "check", "config", PROMETHEUS / "prometheus.yml")
    if result.returncode != 0 and "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check everything else (relabel
        # regexes, rule files) with the discovery swapped for a static target.
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        config["rule_files"] = [str(PROMETHEUS / pattern) for pattern in config["rule_files"]]
        for section in [*config["scrape_configs"], *config["alerting"]["alertmanagers"]]:
            assert [sd["role"] for sd in section.pop("kubernetes_sd_configs")] == ["pod"]
            section["static_configs"] = [{"targets": ["10.0.0.1:9999"]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        result = run("promtool", "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_config_discovers_pods_never_a_service_vip():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert "static_configs" not in job, f"{job['job_name']}: a static target is one Service VIP, one random pod"
        assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
        keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        assert any(r["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] for r in keep)
    # One set of rules for both configs.
    assert config["rule_files"] == yaml.safe_load((PROMETHEUS / "local.yml").read_text())["rule_files"]


def test_local_config_scrapes_every_service_on_its_ops_port():
    # The ops port is the only one serving /metrics (the API port answers it 404).
    config = yaml.safe_load((PROMETHEUS / "local.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    # Besides the services, the Pushgateway the batch jobs push to (tests/e2e/test_backup_alerts.py).
    assert targets.pop("pushgateway") == ["127.0.0.1:9091"]
    assert targets == {name: [f"127.0.0.1:{spec.ops_port}"] for name, spec in services().items()}


@pytest.mark.skipif(not (K8S_DIR / "base").is_dir(), reason="deploy/k8s/base does not exist yet")
def test_every_scraped_kubernetes_app_becomes_a_job_the_alerts_cover():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    # The job is the pod's app name as it is: no rule rewrites it into another name.
    (job_rule,) = [rule for rule in config["scrape_configs"][0]["relabel_configs"] if rule.get("target_label") == "job"]
    assert job_rule == {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "target_label": "job"}
    apps = set()
    for path in (K8S_DIR / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            template = doc.get("spec", {}).get("template", {}).get("metadata", {})
            if template.get("annotations", {}).get("prometheus.io/scrape") == "true":
                apps.add(template["labels"]["app.kubernetes.io/name"])
    assert apps, "no pod in deploy/k8s/base is annotated for scraping"
    assert apps == SERVICE_JOBS


# --- rules -----------------------------------------------------------------------------------

def test_rule_files_are_valid(monitoring_tools):
    result = run("promtool", "check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(monitoring_tools):
    result = run("promtool", "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_both_firing_and_silent():
    fired, silent = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "never shown to fire"
    assert names - silent - HEARTBEATS == set(), "never shown to stay silent"


def test_every_alert_has_severity_service_and_annotations():
    for rule in alerts():
        severities = {"heartbeat"} if rule["alert"] in HEARTBEATS else {"critical", "warning", "ticket"}
        assert rule["labels"]["severity"] in severities, rule["alert"]
        assert set(rule["annotations"]) >= {"summary", "description", "runbook_url"}, rule["alert"]
        # The label comes from the rule, from `service:` recorded series, or from label_replace.
        assert "service" in rule["labels"] or "service" in rule["expr"], rule["alert"]


def test_service_down_and_absent_cover_every_job():
    by_name: dict[str, list[str]] = {}
    for rule in alerts():
        by_name.setdefault(rule["alert"], []).append(rule["expr"])
    (down,) = by_name["ServiceDown"]
    covered = re.search(r'up\{job=~"([^"]+)"\}', down).group(1).split("|")
    assert set(covered) == SERVICE_JOBS
    absent = {found.group(1) for e in by_name["ServiceAbsent"] if (found := re.search(r'absent\(up\{job="([^"]+)"\}\)', e))}
    assert absent == SERVICE_JOBS
    # A job gone from one namespace while another still runs it: absent() cannot see that.
    (vanished,) = [e for e in by_name["ServiceAbsent"] if "present_over_time" in e]
    assert all(set(listed.split("|")) == SERVICE_JOBS for listed in re.findall(r'up\{job=~"([^"]+)"\}', vanished))


def test_high_error_rate_uses_the_agreed_error_ratio():
    rules = {rule.get("record") or rule["alert"]: rule for rule in load_rules()}
    assert rules["service:request_error_ratio:rate5m"]["expr"] == ERROR_RATIO
    high = rules["HighErrorRate"]
    assert (high["expr"], high["for"], high["labels"]["severity"]) == (
        "service:request_error_ratio:rate5m > 0.05", "5m", "critical")


def test_slo_ratios_are_recorded_for_every_burn_window():
    records = {rule["record"] for rule in load_rules() if "record" in rule}
    for slo in ("slo_availability_error_ratio", "slo_latency_miss_ratio"):
        assert {f"service:{slo}:rate{w}" for w in SLO_WINDOWS} <= records
    burns = [squeeze(rule["expr"]) for rule in alerts() if rule["alert"].endswith("BudgetBurn")]
    for budget in ("0.001", "0.01"):
        page = [e for e in burns if f"(14.4*{budget})" in e]
        assert len(page) == 1 and f"rate5m>(14.4*{budget})" in page[0] and f"rate6h>(6*{budget})" in page[0]
        assert any(f"rate3d>(1*{budget})" in e and f"rate6h>(1*{budget})" in e for e in burns)


def test_analysis_template_judges_the_same_error_ratio():
    templates = []
    for path in sorted(K8S_DIR.rglob("*.yaml")) if K8S_DIR.is_dir() else []:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "AnalysisTemplate":
                templates += [m["provider"]["prometheus"]["query"] for m in doc["spec"]["metrics"]
                              if "errors_total" in m.get("provider", {}).get("prometheus", {}).get("query", "")]
    if not templates:
        pytest.skip("no AnalysisTemplate querying errors_total under deploy/k8s yet")
    canary = 'namespace="{{args.namespace}}", service="{{args.service}}", rollouts_pod_template_hash="{{args.canary-hash}}"'
    for query in templates:
        # The alert's ratio narrowed to the canary: its namespace, service and ReplicaSet.
        assert query.count("{" + canary + "}") == 2, query
        assert squeeze(query.replace("{" + canary + "}", "")) == squeeze(ERROR_RATIO), query


# --- dashboards ------------------------------------------------------------------------------

def test_dashboards_are_distinct_and_use_the_provisioned_datasource():
    provisioned = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    dashboards = [json.loads(path.read_text()) for path in DASHBOARDS]
    assert {path.stem for path in DASHBOARDS} >= {"service-health", "resources", "events", "auth", "slo"}
    assert len({d["uid"] for d in dashboards}) == len(dashboards)
    for dashboard in dashboards:
        for panel in dashboard["panels"]:
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in panel["targets"])


def test_every_quantile_aggregates_buckets_by_le_and_service():
    quantiles = [e for _, _, e in dashboard_exprs() if "histogram_quantile" in e]
    assert quantiles
    for expr in quantiles:
        # Server-Sent Events last as long as the client stays: not request latency.
        assert 'sum by (le, namespace, service) (rate(http_request_duration_seconds_bucket{route!~".*/events/stream.*"}[5m]))' \
            in expr, expr


def test_every_dashboard_query_is_valid_promql(monitoring_tools, tmp_path):
    exprs = dashboard_exprs()
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, _, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run("promtool", "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


# --- environments ----------------------------------------------------------------------------

def test_every_aggregation_by_service_keeps_the_namespace():
    """One Prometheus may scrape staging and production: a sum by service alone would add one
    environment's traffic and errors to the other's (environments.test.yml shows it over series)."""
    exprs = [(rule.get("record") or rule["alert"], rule["expr"]) for rule in load_rules()]
    exprs += [(f"{dashboard} / {panel}", expr) for dashboard, panel, expr in dashboard_exprs()]
    for name, expr in exprs:
        for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in grouping.split(",")}
            if labels & {"service", "job"}:
                assert "namespace" in labels, f"{name}: groups by ({grouping}) without namespace: {expr}"


def test_dashboards_filter_by_environment():
    for path in DASHBOARDS:
        variables = json.loads(path.read_text())["templating"]["list"]
        assert [(v["name"], v["type"], v["datasource"]["uid"]) for v in variables] == [
            ("environment", "adhoc", "prometheus")], path.name


# --- metric names ----------------------------------------------------------------------------

PROMQL_WORDS = {"by", "on", "ignoring", "without", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "le", "inf", "nan"}
# Series no code of ours exports: Prometheus' own, the Python client's process collector, and
# cert-manager's.
FOREIGN_METRICS = {"up", "ALERTS", "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                   "process_max_fds", "process_start_time_seconds",
                   "certmanager_certificate_expiration_timestamp_seconds"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, keywords, labels and literals aside)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|on|ignoring|without|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text))
    return {n for n in names if n.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?|e\d+", n)}


def exported_metrics() -> set[str]:
    """Every series name the services export (prometheus_client's suffixes included), and the
    names written out whole (metrics pushed by batch jobs)."""
    found: set[str] = set()
    for path in (ROOT / "src" / "prognetwork").rglob("*.py"):
        text = path.read_text()
        for kind, name in re.findall(r'\b(Counter|Gauge|Histogram|Summary)\(\s*"([a-z_:]+)"', text):
            found |= {"Counter": {f"{name}_total"}, "Gauge": {name},
                      "Histogram": {f"{name}_bucket", f"{name}_count", f"{name}_sum"},
                      "Summary": {f"{name}_count", f"{name}_sum"}}[kind]
        found |= set(re.findall(r'"([a-z_]+_(?:seconds|bytes|total))"', text))
    return found


def test_dashboards_and_rules_read_only_metrics_that_exist():
    """A misspelt or removed metric makes a panel empty and an alert silent for ever."""
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    known = exported_metrics() | recorded | FOREIGN_METRICS
    queries = [(rule.get("record") or rule["alert"], rule["expr"]) for rule in load_rules()]
    queries += [(f"{dashboard} / {panel}", expr) for dashboard, panel, expr in dashboard_exprs()]
    unknown = {name: sorted(metric_names(expr) - known) for name, expr in queries if metric_names(expr) - known}
    assert unknown == {}
    assert metric_names('sum by (namespace, service) (rate(requests_total{route="/x"}[5m])) > bool 0.5') == {
        "requests_total"}
