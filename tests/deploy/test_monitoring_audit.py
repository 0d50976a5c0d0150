"""The audit log's alert and panel against the user service's metric contract, evaluated by
Prometheus' own engine (promtool) and routed by Alertmanager's (amtool).

The contract: the gauge `audit_chain_broken`, no labels of its own, exported by every user-service
replica (0 from the start, 1 while its checkpoint job finds the chain broken) and given
`service="user-service"` by the scrape's relabelling. The alert's own firing and silence are the
rule unit tests in deploy/monitoring/prometheus/tests/audit.test.yml. There is no checkpoint-age
metric, so no rule may watch one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.helpers.monitoring import ALERTMANAGER_CONFIG, DASHBOARDS, PROMETHEUS, run

AUDIT_RULES = PROMETHEUS / "rules" / "audit.yml"
SERVICE = "user-service"
GAUGE = "audit_chain_broken"
PAGER = "pagerduty-and-slack"


def audit_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(AUDIT_RULES.read_text())["groups"] for rule in group["rules"]]


def audit_panels() -> list[tuple[str, dict]]:
    """(dashboard file, panel) for every panel that queries the audit log's metrics."""
    return [(path.name, panel) for path in DASHBOARDS for panel in json.loads(path.read_text())["panels"]
            if any("audit_" in target["expr"] for target in panel["targets"])]


def replica(values: str, instance: str) -> dict:
    """A replica's gauge as scraped: `job` and `service` of the user service."""
    return {"series": f'{GAUGE}{{job="{SERVICE}", service="{SERVICE}", instance="{instance}"}}', "values": values}


def test_the_user_service_exports_the_gauge_the_alert_and_panel_read():
    """What the service's code registers: the gauge, unlabelled, at 0 before any check."""
    from prometheus_client import REGISTRY

    import prognetwork.users.app  # noqa: F401  (registers the service's metrics)

    (family,) = [f for f in REGISTRY.collect() if f.name == GAUGE]
    assert family.type == "gauge"
    assert [(s.name, s.labels) for s in family.samples] == [(GAUGE, {})]
    # Every metric the audit rules and panels name is that one: a misspelt name matches nothing.
    exprs = [rule["expr"] for rule in audit_rules()]
    exprs += [target["expr"] for _, panel in audit_panels() for target in panel["targets"]]
    assert {"AuditChainBroken"} == {rule["alert"] for rule in audit_rules()}
    for expr in exprs:
        assert set(re.findall(r"\baudit_\w+", expr)) == {GAUGE}, expr


def test_the_alert_pages_with_the_labels_it_fires_with(monitoring_tools):
    """The rule's own labels, and the `service` its expression keeps, reach the pager; no inhibit
    rule silences it (only a warning is inhibited, and only by a critical alert)."""
    (rule,) = audit_rules()
    labels = {**rule["labels"], "alertname": rule["alert"], "service": SERVICE}
    assert labels["severity"] == "critical" and "by (namespace, service)" in rule["expr"]
    result = run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                 f"--verify.receivers={PAGER}", *(f"{k}={v}" for k, v in labels.items()))
    assert result.returncode == 0, result.stdout + result.stderr
    for inhibit in yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["inhibit_rules"]:
        targets = dict(re.fullmatch(r'(\w+)="([^"]*)"', m).groups() for m in inhibit["target_matchers"])
        assert any(labels.get(k) != v for k, v in targets.items()), inhibit


def test_a_dashboard_panel_shows_what_the_alert_watches(monitoring_tools, tmp_path: Path):
    """The panel, over two replicas of which one found the chain broken: one line, the user
    service's, at 1; the alert's expression is the panel's with its threshold."""
    ((dashboard, panel),) = audit_panels()
    assert dashboard == "auth.json"
    (target,) = panel["targets"]
    (rule,) = audit_rules()
    assert rule["expr"].strip() == target["expr"] + " > 0"
    rules = tmp_path / "audit-dashboard.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "audit-dashboard", "rules": [
        {"record": "audit_dashboard:panel", "expr": target["expr"]}]}]}))
    test_file = tmp_path / "audit-dashboard.test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [str(rules)], "evaluation_interval": "1m",
        "tests": [{"name": "the audit panel over two replicas", "interval": "1m",
                   "input_series": [replica("0x10 1x10", "10.1.0.1:4007"), replica("0x20", "10.1.0.2:4007")],
                   "promql_expr_test": [
                       {"expr": "audit_dashboard:panel", "eval_time": "5m",
                        "exp_samples": [{"labels": f'audit_dashboard:panel{{service="{SERVICE}"}}', "value": 0}]},
                       {"expr": "audit_dashboard:panel", "eval_time": "15m",
                        "exp_samples": [{"labels": f'audit_dashboard:panel{{service="{SERVICE}"}}', "value": 1}]},
                   ]}],
    }))
    result = run("promtool", "test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr
