"""The admin console's dashboard, evaluated by Prometheus' own engine (promtool) over the HTTP
metrics every service exports (kit.metrics) as the console would export them.

The console has no metrics of its own: its panels are the kit's `requests_total`, `errors_total`
and `http_request_duration_seconds` for `service="admin-client"`, through the shared recording
rules (rules/http.yml). Every panel is evaluated over series of that shape, beside another
service's, which it must not show; the kubelet's probes and Prometheus' scrapes, and the event
stream the console relays (it lasts as long as the browser stays), must not count as operators'
requests or latency.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.helpers.monitoring import MONITORING, PROMETHEUS, load_rules, run

DASHBOARD = MONITORING / "grafana" / "dashboards" / "admin.json"
SERVICE = "admin-client"
# The HTTP metrics every service exports (kit.metrics); the panels may name these and recording rules.
KIT_METRICS = {"requests_total", "errors_total", "http_request_duration_seconds_bucket"}
# How many lines each panel draws over the series below (per query): one per label set it groups by.
LINES = {
    "Requests by route": 3,
    "Requests by status": 3,
    "Response time p50 / p95 / p99": 1,
    "Error ratio (5xx)": 1,
    "Readiness probes failing": 1,
}
BUCKETS = ("0.1", "0.5", "10", "+Inf")


def series(metric: str, values: str, service: str = SERVICE, **labels: str) -> dict:
    """A series as scraped: `job` and `service` of the service, one instance."""
    found = {"job": service, "service": service, "instance": "10.1.0.9:4000", **labels}
    return {"series": metric + "{" + ", ".join(f'{k}="{v}"' for k, v in found.items()) + "}", "values": values}


def service_series(service: str) -> list[dict]:
    """A minute of a console's traffic, each minute: 11 page loads on / (one slow), a refused page
    and a failed one on /users, one relayed stream that ended, 16 readiness probes (4 failing) and
    4 scrapes."""
    answered = [("/", "200", 10), ("/", "200", 1), ("/users", "403", 1), ("/users", "500", 1),
                ("/events/stream", "200", 1), ("/readiness", "200", 12), ("/readiness", "503", 4),
                ("/metrics", "200", 4)]
    counts: dict[tuple[str, str], int] = {}
    for route, status, n in answered:
        counts[route, status] = counts.get((route, status), 0) + n
    found = [series("requests_total", f"0+{n}x80", service, route=route, status=status)
             for (route, status), n in counts.items()]
    found.append(series("errors_total", "0+1x80", service, route="/users", status="500"))
    # Durations: on /, 8 within 0.1 s, 10 within 0.5 s, all 11 within 10 s; the stream, minutes.
    for route, per_bucket in (("/", (8, 10, 11, 11)), ("/events/stream", (0, 0, 0, 1))):
        found += [series("http_request_duration_seconds_bucket", f"0+{n}x80", service, route=route, status="200", le=le)
                  for le, n in zip(BUCKETS, per_bucket, strict=True)]
    return found


def panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_every_console_panel_shows_the_console_alone_as_its_legend_says(monitoring_tools, tmp_path: Path):
    assert {panel["title"] for panel in panels()} == set(LINES), "say how many lines a new panel draws"
    records, checks = [], []
    for panel in panels():
        for target in panel["targets"]:
            name = f"admin_dashboard:panel_{panel['id']}_{target['refId']}"
            records.append({"record": name, "expr": target["expr"]})
            checks.append({"expr": f"count by (service) ({name})", "eval_time": "70m",
                           "exp_samples": [{"labels": f'{{service="{SERVICE}"}}', "value": LINES[panel["title"]]}]})
    rules = tmp_path / "admin-dashboard.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "admin-dashboard", "rules": records}]}))
    # Read as an operator would (per mille, rounded: no float noise): 1 request in 34 answered
    # with a 5xx, 4 probes in 16 failing, and p95 from the page loads alone (4.775 s; with the
    # relayed stream counted it would be the 10 s bucket's bound).
    by_ref = {(panel["title"], target["refId"]): f"admin_dashboard:panel_{panel['id']}_{target['refId']}"
              for panel in panels() for target in panel["targets"]}
    shown = {
        ("Error ratio (5xx)", "A"): 29,
        ("Readiness probes failing", "A"): 250,
        ("Response time p50 / p95 / p99", "B"): 4775,
    }
    for key, value in shown.items():
        checks.append({"expr": f"round({by_ref[key]} * 1000)", "eval_time": "70m",
                       "exp_samples": [{"labels": f'{{service="{SERVICE}"}}', "value": value}]})
    # The operators' requests by route: the probes and scrapes are not among them.
    checks.append({"expr": f'count by (route) ({by_ref["Requests by route", "A"]})', "eval_time": "70m",
                   "exp_samples": [{"labels": f'{{route="{route}"}}', "value": 1}
                                   for route in ("/", "/events/stream", "/users")]})
    test_file = tmp_path / "admin-dashboard.test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [str(PROMETHEUS / "rules" / "http.yml"), str(rules)], "evaluation_interval": "1m",
        "tests": [{"name": "the console's dashboard over its HTTP metrics", "interval": "1m",
                   "input_series": service_series(SERVICE) + service_series("user-service"),
                   "promql_expr_test": checks}],
    }))
    result = run("promtool", "test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_panels_name_only_the_kits_metrics_and_shared_recording_rules():
    """The console exports nothing of its own, so a panel naming another metric would stay empty."""
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    for panel in panels():
        for target in panel["targets"]:
            names = set(re.findall(r"\b([a-z_][a-z0-9_:]*)\s*\{", target["expr"]))
            assert names and names <= KIT_METRICS | recorded, (panel["title"], target["expr"])
            assert f'service="{SERVICE}"' in target["expr"], (panel["title"], target["expr"])
