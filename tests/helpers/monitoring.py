"""Prometheus, Alertmanager and Grafana configs (deploy/monitoring), and the tools that check them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.helpers.paths import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS = MONITORING / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
TOOLS = ("prometheus", "promtool", "prometheus-alertmanager", "amtool", "prometheus-pushgateway")  # Debian's binary names


def install_monitoring_tools() -> None:
    """Install Prometheus, Alertmanager (and their CLIs) and the Pushgateway through the project's script."""
    if all(shutil.which(tool) for tool in TOOLS):
        return
    result = subprocess.run(["sh", str(ROOT / "scripts" / "install-monitoring-tools.sh")], capture_output=True, text=True)
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    assert not missing, f"scripts/install-monitoring-tools.sh left {missing} missing:\n{result.stdout}\n{result.stderr}"


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=120)


def load_rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in load_rules() if "alert" in rule]


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every query of every panel."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], target["expr"]))
    return found


def squeeze(expr: str) -> str:
    """A PromQL expression without whitespace, to compare two by what they say."""
    return re.sub(r"\s+", "", expr)
