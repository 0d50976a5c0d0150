"""Not part of `make test` (`make test-backup-alerts` runs it): Debian's Prometheus 2.42 started
by this check now and then answers queries but neither scrapes nor evaluates rules for over a
minute, so the check fails about one run in two on this machine for reasons outside what it
tests; the promtool unit tests of the same rules (deploy/monitoring/prometheus/tests/backup.test.yml)
stay in the suite.

The backup alerts against a real Prometheus scraping a real Pushgateway that a real
`prog backup create` pushed to: BackupMetricAbsent fires while nothing was ever pushed, both
alerts are silent after a backup, and BackupTooOld fires (warning, then critical) once the
pushed success time is old.

"Old" is made by pushing, into the same group, a success timestamp 27 or 51 hours in the past,
as a backup that stopped running would have left it. The rules are the real rule file's backup
group with `for:` shortened to 1 s in a test copy (the real 10 m and 1 h would make this test
wait that long); evaluation and scraping run every second.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from prognetwork.jobs import backup_metrics
from tests.helpers.databases import create_database, drop_database, with_database
from tests.helpers.http import http_status
from tests.helpers.monitoring import PROMETHEUS, install_monitoring_tools
from tests.helpers.paths import ROOT
from tests.helpers.polling import eventually
from tests.helpers.ports import free_port
from tests.helpers.threads import in_thread

pytestmark = pytest.mark.e2e
BACKUP_GROUP = "prognetwork-backups"


@pytest.fixture(scope="module")
def tools() -> None:
    install_monitoring_tools()
    if not shutil.which("prometheus-pushgateway"):
        done = subprocess.run(["sh", str(ROOT / "scripts" / "install-monitoring-tools.sh")], capture_output=True, text=True)
        assert shutil.which("prometheus-pushgateway"), done.stdout + done.stderr


@contextmanager
def started(command: list[str], ready_url: str, log_path: Path) -> Iterator[subprocess.Popen]:
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: process.poll() is not None or http_status(ready_url) == 200, timeout=30,
                   what=f"{command[0]} to become ready")  # fmt: skip
        assert process.poll() is None, log_path.read_text()
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@pytest.fixture
def pushgateway(tools, tmp_path) -> Iterator[str]:
    url = f"http://127.0.0.1:{free_port()}"
    command = ["prometheus-pushgateway", f"--web.listen-address={url.removeprefix('http://')}"]
    with started(command, url + "/-/ready", tmp_path / "pushgateway.log"):
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
def prometheus(pushgateway, tmp_path) -> Iterator[str]:
    """Prometheus with local.yml's Pushgateway job (honor_labels) pointed at the test's one."""
    local = yaml.safe_load((PROMETHEUS / "local.yml").read_text())
    (job,) = [j for j in local["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert job["honor_labels"] is True
    job["static_configs"] = [{"targets": [pushgateway.removeprefix("http://")]}]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(backup_rules(tmp_path))], "scrape_configs": [job]}  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    command = ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
               f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn"]  # fmt: skip
    # Debian's Prometheus 2.42 now and then comes up ready but never starts its rule and scrape
    # loops (seen here about one start in two, logs silent): a server whose rule group has not
    # been evaluated in 15 s is replaced once by a fresh one, so what is tested is the rules.
    for attempt in (1, 2):
        with started(command, url + "/-/ready", tmp_path / f"prometheus-{attempt}.log"):
            if attempt == 2 or _evaluating(url):
                yield url
                return


def _evaluating(url: str) -> bool:
    def evaluated() -> bool:
        with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=5) as response:
            groups = json.loads(response.read())["data"]["groups"]
        return any(not group["lastEvaluation"].startswith("0001-") for group in groups)

    try:
        eventually(evaluated, timeout=15, interval=0.5, what="the rule group's first evaluation")
    except AssertionError:
        return False
    return True


@pytest.fixture
def database(servers) -> Iterator[str]:
    """A small database to back up (unmigrated: a backup of any database reports success)."""
    name = f"prog_test_backup_alerts_{uuid.uuid4().hex[:10]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    yield with_database(servers.pg_admin_url, name)
    in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def firing(prometheus: str) -> set[tuple[str, str]]:
    """(alertname, severity) of every firing alert."""
    return {(a["metric"]["alertname"], a["metric"]["severity"])
            for a in query(prometheus, 'ALERTS{alertstate="firing"}')}  # fmt: skip


def settles_at(prometheus: str, expected: set[tuple[str, str]], what: str) -> None:
    """Wait until exactly `expected` fires, and still does a few evaluations later."""

    def stable() -> bool:
        if firing(prometheus) != expected:
            return False
        deadline = time.monotonic() + 3  # three evaluation intervals: not a passing state
        while time.monotonic() < deadline:
            if firing(prometheus) != expected:
                return False
        return True

    eventually(stable, timeout=60, interval=0.5, what=what)


def test_the_backup_alerts_follow_what_prog_backup_pushed(prometheus, pushgateway, database, tmp_path):
    settles_at(prometheus, {("BackupMetricAbsent", "warning")}, "BackupMetricAbsent while nothing was pushed")

    env = {**os.environ, "DATABASE_URL": database, "PUSHGATEWAY_URL": pushgateway}
    done = subprocess.run([sys.executable, "-m", "prognetwork", "backup", "create", "--target", str(tmp_path / "b")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics_pushed"] is True
    settles_at(prometheus, set(), "both backup alerts silent after a backup")
    (series,) = query(prometheus, "backup_last_success_timestamp_seconds")
    assert series["metric"]["job"] == "backup"
    assert abs(float(series["value"][1]) - time.time()) < 3600
    assert query(prometheus, 'backup_last_size_bytes{job="backup"}')

    def stopped_since(hours: float) -> None:
        assert backup_metrics.push(pushgateway, {backup_metrics.LAST_SUCCESS: time.time() - hours * 3600})

    stopped_since(27)
    settles_at(prometheus, {("BackupTooOld", "warning")}, "BackupTooOld (warning) 27 hours after the last backup")
    stopped_since(51)
    settles_at(prometheus, {("BackupTooOld", "warning"), ("BackupTooOld", "critical")},
               "BackupTooOld (warning and critical) 51 hours after the last backup")  # fmt: skip
    (alert, _) = query(prometheus, 'ALERTS{alertname="BackupTooOld", alertstate="firing"}')
    assert alert["metric"]["service"] == "backup" and alert["metric"]["job"] == "backup"
