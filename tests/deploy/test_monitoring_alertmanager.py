"""Alertmanager routing, inhibition and secret handling, checked with amtool."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.helpers.monitoring import ALERTMANAGER_CONFIG, run


def test_config_is_valid(monitoring_tools):
    result = run("amtool", "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("labels", "receiver"), [
    ({"severity": "critical", "alertname": "ServiceDown", "service": "user-service"}, "pagerduty-and-slack"),
    ({"severity": "critical", "alertname": "AvailabilityBudgetBurn", "service": "api-gateway", "slo": "availability"},
     "pagerduty-and-slack"),
    ({"severity": "warning", "alertname": "HighLatencyP95", "service": "user-service"}, "slack-and-email"),
    ({"severity": "ticket", "alertname": "LatencyBudgetBurn", "service": "user-service", "slo": "latency"}, "jira"),
    ({"alertname": "SomethingWithoutSeverity"}, "slack"),
    # Billing's own alerts reach its channel too, then go where their severity says.
    ({"severity": "warning", "alertname": "BillingWebhookFailures", "service": "billing-service", "outcome": "error"},
     "billing,slack-and-email"),
    ({"severity": "ticket", "alertname": "BillingPaymentFailures", "service": "billing-service"}, "billing,jira"),
    # Its availability alerts are everyone's: the pager alone, as for any service.
    ({"severity": "critical", "alertname": "ServiceDown", "service": "billing-service"}, "pagerduty-and-slack"),
    ({"severity": "warning", "alertname": "HighLatencyP95", "service": "billing-service"}, "slack-and-email"),
    # The admin console has no signals of its own: its generic alerts go by severity. Its outage
    # pages: the operators lose their view of the platform and the means to act on it.
    ({"severity": "critical", "alertname": "ServiceDown", "service": "admin-client"}, "pagerduty-and-slack"),
    ({"severity": "warning", "alertname": "ReadinessFailing", "service": "admin-client"}, "slack-and-email"),
    # The audit log's chain broken: records were altered or deleted. It pages.
    ({"severity": "critical", "alertname": "AuditChainBroken", "service": "user-service"}, "pagerduty-and-slack"),
    # One Prometheus, two environments: production's pages, staging's and development's never do.
    ({"severity": "critical", "alertname": "ServiceDown", "service": "user-service", "namespace": "prog-production"},
     "pagerduty-and-slack"),
    ({"severity": "critical", "alertname": "ServiceDown", "service": "user-service", "namespace": "prog-staging"},
     "staging"),
    ({"severity": "critical", "alertname": "HighErrorRate", "service": "api-gateway", "namespace": "prog-development"},
     "staging"),
    ({"severity": "ticket", "alertname": "BillingPaymentFailures", "service": "billing-service",
      "namespace": "prog-staging"}, "staging"),
    ({"severity": "warning", "alertname": "BillingWebhookFailures", "service": "billing-service", "outcome": "error",
      "namespace": "prog-production"}, "billing,slack-and-email"),
    # The dead man's switch reaches the heartbeat alone, never a person.
    ({"severity": "heartbeat", "alertname": "Watchdog", "service": "prometheus"}, "heartbeat"),
])
def test_routes_by_severity(monitoring_tools, labels, receiver):
    result = run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", f"--verify.receivers={receiver}",
                 *(f"{k}={v}" for k, v in labels.items()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_critical_pages_and_posts_warning_posts_and_mails_ticket_files_an_issue():
    receivers = {r["name"]: r for r in yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["receivers"]}
    assert set(receivers["pagerduty-and-slack"]) >= {"pagerduty_configs", "slack_configs"}
    assert set(receivers["slack-and-email"]) >= {"slack_configs", "email_configs"}
    assert set(receivers["jira"]) == {"name", "webhook_configs"}


def test_warning_is_inhibited_by_a_critical_of_the_same_alert_and_service():
    rules = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["inhibit_rules"]
    assert {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
            "equal": ["alertname", "service"]} in rules


def test_secrets_come_from_files_only():
    text = ALERTMANAGER_CONFIG.read_text()
    secret_keys = ("routing_key", "service_key", "api_url", "auth_password", "smtp_auth_password",
                   "slack_api_url", "api_key", "auth_secret")
    for key in secret_keys:
        assert not re.search(rf"^\s*{key}:", text, re.MULTILINE), f"{key} written in the config; use {key}_file"
    files = re.findall(r"_file:\s*(\S+)", text)
    assert len(files) >= 3 and all(path.startswith("/etc/alertmanager/secrets/") for path in files)


def test_staging_receiver_never_pages_and_heartbeat_only_posts_to_the_switch():
    receivers = {r["name"]: r for r in yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["receivers"]}
    assert set(receivers["staging"]) == {"name", "slack_configs"}
    assert set(receivers["heartbeat"]) == {"name", "webhook_configs"}


def test_the_watchdog_repeats_every_minute_so_silence_means_alerting_is_down():
    routes = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]["routes"]
    (heartbeat,) = [r for r in routes if r["receiver"] == "heartbeat"]
    assert heartbeat["matchers"] == ['alertname="Watchdog"'] and heartbeat["repeat_interval"] == "1m"
    assert routes.index(heartbeat) == 0, "the Watchdog must be matched before any other route"
