"""The fault drills' short versions (`make drill-outage` and `make drill-restart` run them in full):
each starts its own platform on its own PostgreSQL and Redis, breaks it, and reports one JSON line.
What is asserted is what the platform promises, not how fast it recovered (the machine is shared):
no session lost, every email exactly once, every dependency's return noticed, no failed request."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.e2e


def run_drill(script: str, *args: str, timeout: float = 600) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "drills" / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_outages_of_postgres_and_redis_lose_no_session_and_no_email():
    report = run_drill("outage.py", "--outage", "4", "--settle", "2", "--chains", "2")
    assert set(report) == {"postgres", "redis", "redis_hung"}
    for name, phase in report.items():
        assert phase["sessions_lost"] == 0, (name, phase)
        assert phase["emails_delivered"] == phase["emails_expected"] and phase["emails_duplicated"] == 0, (name, phase)
        assert phase["recovered_after_s"] is not None, (name, phase)
        assert 500 not in {int(status) for status in phase["by_status"]}, (name, phase)
    # PostgreSQL gates the user service's readiness; Redis never does (kit.dependencies).
    assert report["postgres"]["unready_after_s"] is not None
    assert report["redis"]["unready_after_s"] is None and report["redis_hung"]["unready_after_s"] is None
    assert report["postgres"]["emails_expected"] > 0


def test_rolling_restarts_of_the_gateway_and_a_service_fail_no_request():
    report = run_drill("restart.py", "--duration", "0", "--clients", "3", "--services", "api-gateway,user-service",
                       "--lean")
    assert report["restarts"] == 4 and report["requests"] > 0
    assert report["failed"] == 0, report
