"""The billing dashboard and alerts against the billing service's metric contract, evaluated by
Prometheus' own engine (promtool).

The contract (what the service exports, beside the kit's HTTP metrics every service has):
`billing_webhook_events_total{type, outcome}`, `billing_payment_failures_total` and
`billing_stripe_requests_total{operation, outcome}`, each given `service="billing-service"` by
the scrape's relabelling. Every panel is evaluated over series of that shape (and another
service's HTTP series, which it must not show); the alerts' own firing and silence are the rule
unit tests in deploy/monitoring/prometheus/tests/billing.test.yml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.helpers.monitoring import MONITORING, PROMETHEUS, alerts, run

DASHBOARD = MONITORING / "grafana" / "dashboards" / "billing.json"
BILLING_RULES = PROMETHEUS / "rules" / "billing.yml"
SERVICE = "billing-service"
# The contract: each metric's labels, and the outcomes it may carry.
LABELS = {
    "billing_webhook_events_total": {"type", "outcome"},
    "billing_payment_failures_total": set(),
    "billing_stripe_requests_total": {"operation", "outcome"},
}
OUTCOMES = {
    "billing_webhook_events_total": {"processed", "duplicate", "ignored", "invalid_signature", "error"},
    "billing_stripe_requests_total": {"ok", "error", "unavailable"},
}
# How many lines each panel draws over the series below (per query): one per label set it groups by.
LINES = {
    "Webhook events by type and outcome": 5,
    "Webhook failures": 2,
    "Payment failures in the last hour": 1,
    "Stripe API requests by operation and outcome": 4,
    "Stripe API failure share": 2,
    "Request rate by route": 2,
    "Response time p50 / p95 / p99": 1,
    "Error ratio (5xx)": 1,
}


def series(metric: str, values: str, service: str = SERVICE, **labels: str) -> dict:
    """A series as scraped: `job` and `service` of the service, one instance."""
    found = {"job": service, "service": service, "instance": "10.1.0.7:4003", **labels}
    return {"series": metric + "{" + ", ".join(f'{k}="{v}"' for k, v in found.items()) + "}", "values": values}


def contract_series() -> list[dict]:
    webhooks = [("invoice.paid", "processed", "0+6x80"), ("invoice.paid", "duplicate", "0+1x80"),
                ("other", "ignored", "0+1x80"), ("unverified", "invalid_signature", "0+1x80"),
                ("invoice.payment_failed", "error", "0+1x80")]
    stripe = [("checkout.sessions.create", "ok", "0+9x80"), ("checkout.sessions.create", "error", "0+1x80"),
              ("customers.create", "ok", "0+2x80"), ("customers.create", "unavailable", "0+2x80")]
    http = []
    for service in (SERVICE, "user-service"):
        route = "/v1/billing/webhooks/stripe" if service == SERVICE else "/v1/users/me"
        http += [series("requests_total", "0+10x80", service, route=route, status="200"),
                 series("requests_total", "0+1x80", service, route=f"{route}/other", status="500"),
                 series("errors_total", "0+1x80", service, route=f"{route}/other", status="500")]
        http += [series("http_request_duration_seconds_bucket", f"0+{n}x80", service, route=route, le=le)
                 for le, n in (("0.1", 8), ("0.5", 10), ("+Inf", 11))]
    return (
        [series("billing_webhook_events_total", v, type=t, outcome=o) for t, o, v in webhooks]
        + [series("billing_payment_failures_total", "0+1x80")]
        + [series("billing_stripe_requests_total", v, operation=op, outcome=o) for op, o, v in stripe]
        + http
    )


def panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_every_billing_panel_shows_billing_service_alone_as_its_legend_says(monitoring_tools, tmp_path: Path):
    assert {panel["title"] for panel in panels()} == set(LINES), "say how many lines a new panel draws"
    records, checks = [], []
    for panel in panels():
        for target in panel["targets"]:
            name = f"billing_dashboard:panel_{panel['id']}_{target['refId']}"
            records.append({"record": name, "expr": target["expr"]})
            checks.append({"expr": f"count by (service) ({name})", "eval_time": "70m",
                           "exp_samples": [{"labels": f'{{service="{SERVICE}"}}', "value": LINES[panel["title"]]}]})
    rules = tmp_path / "billing-dashboard.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "billing-dashboard", "rules": records}]}))
    # A few values, read as an operator would (per mille, rounded: no float noise): 60 failures an
    # hour, 1 Stripe call in 10 failing for checkouts and 2 in 4 for customers, 1 request in 11
    # answered with a 5xx.
    by_title = {panel["title"]: f"billing_dashboard:panel_{panel['id']}_A" for panel in panels()}
    shown = {
        "Payment failures in the last hour": [({}, 60_000)],
        "Stripe API failure share": [({"operation": "checkout.sessions.create"}, 100),
                                     ({"operation": "customers.create"}, 500)],
        "Error ratio (5xx)": [({}, 91)],
    }
    for title, samples in shown.items():
        checks.append({"expr": f"round({by_title[title]} * 1000)", "eval_time": "70m", "exp_samples": [
            {"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in {"service": SERVICE, **labels}.items()) + "}",
             "value": value} for labels, value in samples]})
    test_file = tmp_path / "billing-dashboard.test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [str(PROMETHEUS / "rules" / "http.yml"), str(rules)], "evaluation_interval": "1m",
        "tests": [{"name": "the billing dashboard over the billing service's metrics", "interval": "1m",
                   "input_series": contract_series(), "promql_expr_test": checks}],
    }))
    result = run("promtool", "test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_webhook_failure_panel_draws_what_the_alert_watches():
    (panel,) = [p for p in panels() if p["title"] == "Webhook failures"]
    (alert,) = [rule for rule in alerts() if rule["alert"] == "BillingWebhookFailures"]
    assert alert["expr"].strip() == panel["targets"][0]["expr"] + " > 0"


def test_billing_queries_name_only_the_contracts_metrics_and_outcomes():
    """A misspelt metric or outcome (`invalid-signature`) would match nothing, silently."""
    exprs = [target["expr"] for panel in panels() for target in panel["targets"]]
    exprs += [group_rule["expr"] for group in yaml.safe_load(BILLING_RULES.read_text())["groups"]
              for group_rule in group["rules"]]
    for expr in exprs:
        for metric in re.findall(r"\bbilling_\w+", expr):
            assert metric in LABELS, (metric, expr)
        for metric, matcher in re.findall(r"\b(billing_\w+)\{([^}]*)\}", expr):
            for values in re.findall(r'outcome\s*(?:=~|!~|=|!=)\s*"([^"]*)"', matcher):
                assert set(values.split("|")) <= OUTCOMES[metric], (values, expr)


def test_the_billing_service_exports_the_contract():
    """What the service's code registers: the metric names, their labels, and (every combination
    being exported at 0 from the start, so rate() sees the first event) the outcomes."""
    from prometheus_client import REGISTRY

    import prognetwork.billing.app  # noqa: F401  (registers the service's metrics)

    exported: dict[str, tuple[set[str], set[str]]] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name in LABELS:
                labels, outcomes = exported.setdefault(sample.name, (set(), set()))
                labels |= set(sample.labels)
                outcomes |= {sample.labels["outcome"]} if "outcome" in sample.labels else set()
    assert {name: labels for name, (labels, _) in exported.items()} == LABELS
    assert {name: outcomes for name, (_, outcomes) in exported.items() if outcomes} == OUTCOMES
