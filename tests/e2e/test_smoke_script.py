"""scripts/smoke-test.py, the deploy pipeline's post-deploy check, run as the pipeline runs it:
against real user, notification and gateway processes in development (what `prog up` runs), it
registers through the gateway, verifies with the outbox's link, reads /users/me, signs out. It
fails, saying why in one line, when the gateway does not answer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.helpers.paths import ROOT
from tests.helpers.processes import issuer_env, start_service

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "scripts" / "smoke-test.py"


def smoke_test(url: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMOKE_")}
    return subprocess.run([sys.executable, str(SCRIPT), url], capture_output=True, text=True, timeout=120,
                          env={**clean, **env})


@pytest.fixture
def gateway_url(service_env, users, tmp_path):
    notifications = start_service("notification-service", {**service_env, **issuer_env(users.url)}, tmp_path)
    gateway = start_service("api-gateway", {**service_env, **issuer_env(users.url),
                                            "NOTIFICATION_SERVICE_URL": notifications.url}, tmp_path)
    yield gateway.url
    gateway.stop()
    notifications.stop()


def test_smoke_test_passes_on_a_development_platform_and_fails_a_wrong_account(gateway_url):
    done = smoke_test(gateway_url)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("smoke-test: registered smoke-") for line in lines), lines
    assert "smoke-test: signed out: the access token is refused" in lines
    assert lines[-1] == f"smoke-test: passed against {gateway_url}"
    # With an account given (staging, production) it logs in as that account: a wrong one fails.
    done = smoke_test(gateway_url, SMOKE_EMAIL="nobody@example.com", SMOKE_PASSWORD="not the password")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("smoke-test: FAILED: log in as nobody@example.com: HTTP 401"), line


def test_smoke_test_fails_in_one_line_when_nothing_answers():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        done = smoke_test(url)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"smoke-test: FAILED: POST {url}/api/v1/auth/register: no answer"), line
