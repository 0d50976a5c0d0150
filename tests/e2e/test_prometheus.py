"""A real Prometheus scraping the real services: every dashboard query and every rule returns data.

Short scrape and evaluation intervals (1 s), the real rule files, the scrape jobs of local.yml
pointed at the ports the services were started on.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
from pathlib import Path

import pytest
import yaml

from prognetwork.kit import migrations
from prognetwork.registry import services
from tests.helpers.accounts import unique_email
from tests.helpers.databases import DisposablePostgres, DisposableRedis, create_database
from tests.helpers.http import http_status, request_json
from tests.helpers.monitoring import PROMETHEUS, alerts, dashboard_exprs, install_monitoring_tools, load_rules
from tests.helpers.polling import eventually
from tests.helpers.processes import start_service
from tests.helpers.prometheus import Prometheus, running_prometheus, start_prometheus
from tests.helpers.threads import in_thread

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
STARTED = {"user-service", "notification-service"}
# Metrics only one service exports.
OWNERS = {
    "user-service": ("user_registrations_total", "user_logins_total", "user_token_refreshes_total", "events_appended_total",
              "redis_pool_connections"),
    "notification-service": ("events_consumed_total", "event_consumer_position", "event_log_head_sequence",
                             "event_consumer_failures_total",
                      "emails_sent_total", "emails_failed_total"),
}
# Queries that cannot return data here, and why.
NO_DATA_HERE = {
    "emails_failed_total": "the development outbox never fails a delivery",
    "event_consumer_failures_total": "needs a consumer batch to fail (PostgreSQL lost mid-batch)",
    "backup_last_success_timestamp_seconds": "pushed by `prog backup` to a Pushgateway, which this platform run "
                                             "has none of; tests/e2e/test_backup_alerts.py scrapes it for real",
    "stream_": "the streaming service's own metrics; tests/integration/test_streaming.py checks their export",
    "billing_": "billing's own metrics; tests/deploy/test_monitoring_billing.py checks them over billing-shaped series",
    'service="billing-service"': "billing runs against a Stripe fake in its own tests, not in this platform",
    'service="admin-client"': "the admin console is not started here; tests/deploy/test_monitoring_admin.py checks "
                              "its dashboard over series of its shape",
    "vector(1)": "the Watchdog: one series of no service, always",
    "present_over_time": "ServiceAbsent for a job gone from a namespace: every job here is still up",
    "certmanager_": "cert-manager's metric: no cert-manager runs here",
    "audit_chain_broken": "the user service's alone, and 0 here (nothing breaks its audit chain); "
                          "tests/deploy/test_monitoring_audit.py checks the alert and panel over series of its shape",
}
# Only user-service answered 5xx (its Redis was stopped): notification-service has no errors_total
# series, so the agreed error ratio has no sample for it: empty, never NaN.
ERRORS_ONLY_FROM = {"user-service"}


def local_config(ports: dict[str, int]) -> dict:
    """local.yml with 1 s intervals, absolute rule paths and only the started services' jobs,
    scraping the ops ports they were started on."""
    config = yaml.safe_load((PROMETHEUS / "local.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS / pattern) for pattern in config["rule_files"]]
    config.pop("alerting")
    jobs = [job for job in config["scrape_configs"] if job["job_name"] in ports]
    for job in jobs:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    config["scrape_configs"] = jobs
    return config


@pytest.fixture(scope="module")
def monitoring_tools() -> None:
    install_monitoring_tools()


def drive_traffic(users, notifications, pg: DisposablePostgres, redis: DisposableRedis) -> None:
    email = unique_email("metrics")
    account = {"email": email, "password": PASSWORD, "name": "Metrics"}
    assert request_json("POST", f"{users.url}/v1/auth/register", account)[0] == 202

    def verification_token() -> str | None:
        status, mails = request_json("GET", f"{notifications.url}/v1/dev/outbox?to={email}")
        links = [re.search(r"token=([\w-]+)", mail["text"]) for mail in mails or []]
        return next((link.group(1) for link in links if link), None)

    token = eventually(verification_token, timeout=20, what="the verification email")
    assert request_json("POST", f"{users.url}/v1/auth/verify-email", {"token": token, "password": PASSWORD})[0] == 200
    assert request_json("POST", f"{users.url}/v1/auth/register", account)[0] == 202  # taken: the same answer
    assert request_json("POST", f"{users.url}/v1/auth/login", {"email": email, "password": "wrong password!"})[0] == 401
    status, tokens = request_json("POST", f"{users.url}/v1/auth/login", {"email": email, "password": PASSWORD})
    assert status == 200
    status, _ = request_json("POST", f"{users.url}/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    assert status == 200
    assert request_json("GET", f"{users.url}/v1/users/me", headers={"Authorization": "Bearer nonsense"})[0] == 401
    assert http_status(f"{users.url}/no/such/path") == 404
    # What the kubelet's readiness probes would do (on the ops port).
    assert http_status(f"{notifications.ops_url}/readiness") == 200

    # Failing readiness probes and 5xx: PostgreSQL goes away, then comes back.
    pg.stop()
    assert eventually(lambda: http_status(f"{users.ops_url}/readiness") == 503, timeout=10)
    assert request_json("POST", f"{users.url}/v1/auth/register", account)[0] == 503
    pg.start()
    eventually(lambda: http_status(f"{users.ops_url}/readiness") == 200, timeout=15, what="user-service ready again")

    # 5xx again: the user service's Redis goes away, then comes back. Redis is not what makes the
    # user service unready (kit.dependencies): /health says degraded.
    redis.stop()
    status, _ = request_json("POST", f"{users.url}/v1/auth/login", {"email": email, "password": PASSWORD})
    assert status == 503
    assert eventually(lambda: request_json("GET", f"{users.ops_url}/health")[1]["status"] == "degraded", timeout=15)
    redis.start()
    eventually(lambda: request_json("GET", f"{users.ops_url}/health")[1]["status"] == "ok", timeout=15,
               what="user-service healthy again")


def analysis_query() -> str:
    path = Path(__file__).resolve().parents[2] / "deploy/k8s/base/error-rate-analysis.yaml"
    template = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "AnalysisTemplate")
    return template["spec"]["metrics"][0]["provider"]["prometheus"]["query"]


def expected_services(expr: str) -> set[str]:
    for service, metrics in OWNERS.items():
        if any(metric in expr for metric in metrics):
            return {service}
    if "errors_total" in expr or "service:request_error_ratio:rate5m" in expr:
        return ERRORS_ONLY_FROM
    return STARTED


def no_data_reason(expr: str) -> str | None:
    return next((reason for needle, reason in NO_DATA_HERE.items() if needle in expr), None)


def as_signal(expr: str) -> str:
    """The alert's expression with each threshold comparison made `bool`: a 0/1 per series, so
    a quiet alert still shows which series (and `service` labels) it watches."""
    return re.sub(r"(==|>)\s*(?=\(?\s*[\d.])", r"\1 bool ", expr)


def assert_answers(prometheus: Prometheus, expr: str, what: str) -> None:
    """`expr` evaluates without NaN; unless listed in NO_DATA_HERE, it returns a series for
    every service expected, and every series it returns names a started service."""
    reason = no_data_reason(expr)
    expected = set() if reason else expected_services(expr)

    last: list[dict] = []

    def services() -> set[str] | None:
        result = last[:] = prometheus.query(expr)
        assert not any(math.isnan(float(sample["value"][1])) for sample in result), f"{what}: NaN in {result}"
        found = {sample["metric"].get("service") for sample in result}
        return (found,) if found >= expected else None

    (found,) = eventually(services, timeout=20, interval=0.5,
                          what=f"{what} to return {expected}: {expr} (last answer: {last})")
    # A series of no service is what the Watchdog is (`vector(1)`); anything else names one started.
    allowed = STARTED | ({None} if "vector(1)" in expr else set())
    assert found <= allowed, f"{what}: series without the `service` label of a started service: {found}"


def test_every_dashboard_query_and_rule_answers_then_service_down_goes_pending(
    monitoring_tools, service_env, tmp_path
):
    (tmp_path / "users-redis").mkdir()
    redis = DisposableRedis(tmp_path / "users-redis")
    # A PostgreSQL of the test's own, to stop: the readiness panels need probes that fail.
    pg = DisposablePostgres(tmp_path / "pg")
    in_thread(asyncio.run, create_database(pg.admin_url, "prog"))
    in_thread(migrations.upgrade, pg.url("prog"))
    env = {**service_env, "DATABASE_URL": pg.url("prog")}
    users = start_service("user-service", {**env, "REDIS_URL": redis.url}, tmp_path)
    notifications = start_service("notification-service", env, tmp_path)
    prometheus_dir = tmp_path / "prometheus"
    prometheus_dir.mkdir()
    # local.yml's jobs are named as the services: the same names `prog serve` took.
    prometheus = None
    try:
        prometheus = start_prometheus(
            local_config({users.name: users.ops_port, notifications.name: notifications.ops_port}), prometheus_dir)
        eventually(lambda: {s["metric"]["job"] for s in prometheus.query("up == 1")} == STARTED,
                   timeout=20, what="both services scraped")
        # Scraped on their ops ports; the API ports have no /metrics.
        targets = prometheus.get("/api/v1/targets?state=active")["data"]["activeTargets"]
        assert {t["labels"]["job"]: t["scrapeUrl"] for t in targets} == {
            "user-service": f"{users.ops_url}/metrics", "notification-service": f"{notifications.ops_url}/metrics"}
        assert http_status(f"{users.url}/metrics") == 404 and http_status(f"{notifications.url}/metrics") == 404
        # Twice: a counter's first sample is its first increment, so rate() sees growth only
        # from what happens after Prometheus has scraped it once.
        drive_traffic(users, notifications, pg, redis)
        eventually(lambda: prometheus.query('user_token_refreshes_total') and prometheus.query('errors_total')
                   and prometheus.query('requests_total{service="notification-service",route="/v1/dev/outbox"}'),
                   timeout=20, what="the first round scraped from both services")
        drive_traffic(users, notifications, pg, redis)

        for dashboard, panel, expr in dashboard_exprs():
            assert_answers(prometheus, expr, f"{dashboard} / {panel}")
        for rule in load_rules():
            if "record" in rule:
                assert_answers(prometheus, rule["record"], f"recording rule {rule['record']}")
        for rule in alerts():
            if "absent(" in rule["expr"]:
                # Answers exactly for what is missing here: api-gateway, event-streaming and the backup job.
                missing = rule["labels"]["service"] not in STARTED
                assert bool(prometheus.query(rule["expr"])) == missing, rule
            else:
                assert_answers(prometheus, as_signal(rule["expr"]), f"alert {rule['alert']}")

        # The canary analysis asks this Prometheus the same question the alert does, and gets the
        # same answer (Argo Rollouts substitutes {{args.service}}, the Rollout's name; here:
        # user-service, which had 5xx). Here no series has a namespace or a ReplicaSet: empty
        # arguments select exactly those (tests/e2e/test_rollout_analysis.py judges real canaries).
        analysis = (analysis_query().replace("{{args.service}}", "user-service")
                    .replace("{{args.namespace}}", "").replace("{{args.canary-hash}}", ""))
        judged = eventually(lambda: prometheus.query(analysis), timeout=20, what="the analysis query answers")
        alerted = prometheus.query('service:request_error_ratio:rate5m{service="user-service"}')
        assert [s["metric"]["service"] for s in judged] == ["user-service"]
        assert abs(float(judged[0]["value"][1]) - float(alerted[0]["value"][1])) < 0.05

        # Every rule evaluates without error.
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
        assert broken == []

        # One service stops: ServiceDown goes pending for it alone.
        users.stop(signal.SIGTERM)

        def down() -> set[str]:
            active = prometheus.get("/api/v1/alerts")["data"]["alerts"]
            return {a["labels"]["service"] for a in active
                    if a["labels"]["alertname"] == "ServiceDown" and a["state"] == "pending"}

        assert eventually(down, timeout=30, interval=0.5, what="ServiceDown pending for user-service") == {"user-service"}
    finally:
        if prometheus is not None:
            prometheus.stop()
        users.stop()
        notifications.stop()
        redis.stop()
        pg.close()


def test_kubernetes_relabelling_turns_annotated_pods_into_service_jobs(monitoring_tools, tmp_path):
    """prometheus.yml's relabelling run by Prometheus itself, on pods described as the Kubernetes
    discovery would (file discovery stands in: Debian's build has no Kubernetes discovery)."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config.pop("alerting")
    config["rule_files"] = []
    # The services' pods: the Pushgateway's own job (its pods in `monitoring`) is another matter.
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "kubernetes-pods"]
    config["scrape_configs"] = [job]
    job.pop("kubernetes_sd_configs")
    job["file_sd_configs"] = [{"files": [str(tmp_path / "pods.json")]}]

    def pod(name: str, app: str, ip: str, annotations: dict[str, str], phase: str = "Running") -> dict:
        labels = {
            "__address__": f"{ip}:9999",
            "__meta_kubernetes_namespace": "prog-production",
            "__meta_kubernetes_pod_name": name,
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_phase": phase,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
        }
        labels |= {f"__meta_kubernetes_pod_annotation_prometheus_io_{k}": v for k, v in annotations.items()}
        return {"targets": [labels.pop("__address__")], "labels": labels}

    # The annotations the manifests give every service's pods (labelled with its name): the ops
    # port, where /metrics is.
    def scrape(name: str) -> dict[str, str]:
        return {"scrape": "true", "port": str(services()[name].ops_port), "path": "/metrics"}

    running = {name: f"10.1.0.{i}" for i, name in enumerate(services(), start=1)}
    pods = [pod(f"{name}-a", name, ip, scrape(name)) for name, ip in running.items()] + [
        pod("user-service-old", "user-service", "10.1.1.1", scrape("user-service"), phase="Succeeded"),
        pod("unannotated", "redis", "10.1.1.2", {}),
    ]
    (tmp_path / "pods.json").write_text(json.dumps(pods))
    with running_prometheus(config, tmp_path) as prometheus:

        def active() -> dict[str, tuple[str, str]] | None:
            targets = prometheus.get("/api/v1/targets?state=active")["data"]["activeTargets"]
            return {t["labels"]["pod"]: (t["labels"]["job"], t["scrapeUrl"]) for t in targets} or None

        # Each pod scraped on its ops port, under the job of its service's name.
        assert eventually(active, timeout=20, interval=0.2) == {
            f"{name}-a": (name, f"http://{ip}:{services()[name].ops_port}/metrics") for name, ip in running.items()
        }
