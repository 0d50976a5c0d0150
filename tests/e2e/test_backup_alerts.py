"""The backup alerts against a real Prometheus scraping a real Pushgateway that a real
`prog backup create` pushed to: BackupMetricAbsent fires while the Pushgateway is scraped and
nothing was ever pushed, both alerts are silent after a backup, and BackupTooOld fires (warning,
then critical) once the pushed success time is old.

"Old" is made by pushing, into the same group, a success timestamp 27 or 51 hours in the past,
as a backup that stopped running would have left it. The rules are the real rule file's backup
group with `for:` shortened to 1 s in a test copy (the real 10 m and 1 h would make this test
wait that long); evaluation and scraping run every second. The Pushgateway starts empty and keeps
nothing after the test (tests/helpers/prometheus.py, `running_pushgateway`, says why that needs
saying with Debian's build).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from prognetwork.jobs import backup_metrics
from tests.helpers.databases import create_database, drop_database, with_database
from tests.helpers.monitoring import PROMETHEUS, install_monitoring_tools
from tests.helpers.paths import ROOT
from tests.helpers.polling import eventually
from tests.helpers.prometheus import Prometheus, running_prometheus, running_pushgateway
from tests.helpers.threads import in_thread

pytestmark = pytest.mark.e2e
BACKUP_GROUP = "prognetwork-backups"


@pytest.fixture(scope="module")
def tools() -> None:
    install_monitoring_tools()


@pytest.fixture
def pushgateway(tools, tmp_path) -> Iterator[str]:
    with running_pushgateway(tmp_path) as url:
        yield url


def backup_rules(directory: Path) -> Path:
    """The real backup alert rules, with every `for:` shortened to 1 s."""
    groups = yaml.safe_load((PROMETHEUS / "rules" / "alerts.yml").read_text())["groups"]
    (group,) = [g for g in groups if g["name"] == BACKUP_GROUP]
    assert {rule["alert"] for rule in group["rules"]} == {"BackupTooOld", "BackupMetricAbsent"}
    for rule in group["rules"]:
        rule["for"] = "1s"
    path = directory / "backup-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    return path


@pytest.fixture
def prometheus(pushgateway, tmp_path) -> Iterator[Prometheus]:
    """Prometheus with local.yml's Pushgateway job (honor_labels) pointed at the test's one."""
    local = yaml.safe_load((PROMETHEUS / "local.yml").read_text())
    (job,) = [j for j in local["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert job["honor_labels"] is True
    job["static_configs"] = [{"targets": [pushgateway.removeprefix("http://")]}]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(backup_rules(tmp_path))], "scrape_configs": [job]}  # fmt: skip
    with running_prometheus(config, tmp_path / "prometheus") as running:
        yield running


@pytest.fixture
def database(servers) -> Iterator[str]:
    """A small database to back up (unmigrated: a backup of any database reports success)."""
    name = f"prog_test_backup_alerts_{uuid.uuid4().hex[:10]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    yield with_database(servers.pg_admin_url, name)
    in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


def active(prometheus: Prometheus) -> set[tuple[str, str, str]]:
    """(alertname, severity, state) of every pending or firing alert."""
    return {(a["metric"]["alertname"], a["metric"]["severity"], a["metric"]["alertstate"])
            for a in prometheus.query("ALERTS")}  # fmt: skip


def settles_at(prometheus: Prometheus, expected: set[tuple[str, str]], what: str) -> None:
    """Wait until exactly `expected` fires and nothing else is even pending, and still so a few
    evaluations later."""
    wanted = {(name, severity, "firing") for name, severity in expected}
    last: list[set[tuple[str, str, str]]] = [set()]

    def as_wanted() -> bool:
        last[0] = active(prometheus)
        return last[0] == wanted

    def stable() -> bool:
        if not as_wanted():
            return False
        deadline = time.monotonic() + 3  # three evaluation intervals: not a passing state
        while time.monotonic() < deadline:
            if not as_wanted():
                return False
        return True

    try:
        eventually(stable, timeout=60, interval=0.5, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; active: {last[0]}; {prometheus.state()}") from None


def test_the_backup_alerts_follow_what_prog_backup_pushed(prometheus, pushgateway, database, tmp_path):
    # Absent is only meaningful once the Pushgateway is scraped: before its first scrape (a few
    # seconds after start) anything it held would look absent too.
    eventually(lambda: prometheus.scraped("pushgateway"), timeout=30, interval=0.5, what="the pushgateway scraped")
    settles_at(prometheus, {("BackupMetricAbsent", "warning")}, "BackupMetricAbsent while nothing was pushed")

    env = {**os.environ, "DATABASE_URL": database, "PUSHGATEWAY_URL": pushgateway}
    done = subprocess.run([sys.executable, "-m", "prognetwork", "backup", "create", "--target", str(tmp_path / "b")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics_pushed"] is True
    settles_at(prometheus, set(), "both backup alerts silent after a backup")
    (series,) = prometheus.query("backup_last_success_timestamp_seconds")
    assert series["metric"]["job"] == "backup"
    assert abs(float(series["value"][1]) - time.time()) < 3600
    assert prometheus.query('backup_last_size_bytes{job="backup"}')

    def stopped_since(hours: float) -> None:
        assert backup_metrics.push(pushgateway, {backup_metrics.LAST_SUCCESS: time.time() - hours * 3600})

    stopped_since(27)
    settles_at(prometheus, {("BackupTooOld", "warning")}, "BackupTooOld (warning) 27 hours after the last backup")
    stopped_since(51)
    settles_at(prometheus, {("BackupTooOld", "warning"), ("BackupTooOld", "critical")},
               "BackupTooOld (warning and critical) 51 hours after the last backup")  # fmt: skip
    (alert, _) = prometheus.query('ALERTS{alertname="BackupTooOld", alertstate="firing"}')
    assert alert["metric"]["service"] == "backup" and alert["metric"]["job"] == "backup"
