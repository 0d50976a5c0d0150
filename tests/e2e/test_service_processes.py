"""Services as real processes: graceful shutdown, crash recovery, and secrets kept out of logs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from tests.helpers.accounts import unique_email
from tests.helpers.http import http_status, http_text, request_json
from tests.helpers.paths import ROOT
from tests.helpers.polling import eventually
from tests.helpers.ports import free_port
from tests.helpers.processes import start_service

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"


def outbox(notifications, email: str) -> list[dict]:
    status, body = request_json("GET", f"{notifications.url}/v1/dev/outbox?to={email}")
    assert status == 200
    return body


def test_sigterm_drains_finishes_in_flight_request_then_exits_zero(service_env, tmp_path):
    users = start_service("user-service", {**service_env, "SHUTDOWN_DRAIN_SECONDS": "1.5"}, tmp_path)
    email = unique_email("slow")
    body = json.dumps({"email": email, "password": PASSWORD, "name": "Slow Upload"}).encode()
    # A request in flight: headers and half the body sent, the rest withheld until after SIGTERM.
    conn = socket.create_connection(("127.0.0.1", users.port))
    conn.sendall(
        b"POST /v1/auth/register HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:20]
    )
    eventually(lambda: http_status(users.ops_url + "/health") == 200)
    users.process.send_signal(signal.SIGTERM)

    # Readiness fails at once, while the listener still accepts during the drain delay.
    assert eventually(lambda: http_status(users.ops_url + "/readiness") == 503, timeout=1.0, interval=0.02)
    assert http_status(users.ops_url + "/health") == 200

    conn.sendall(body[20:])
    response = _read_response(conn)
    assert response.startswith(b"HTTP/1.1 202"), response[:200]

    # After the drain delay the listener closes, and the process exits cleanly.
    eventually(lambda: users.process.poll() is not None, timeout=15, what="exit after drain")
    assert users.process.returncode == 0, users.log()[-2000:]
    # Both listeners are closed now: connections are refused.
    assert http_status(users.ops_url + "/health") is None and http_status(users.url + "/v1/users/me") is None
    log = users.log()
    assert "shutdown requested; draining" in log and "Application shutdown complete" in log


def _read_response(conn: socket.socket) -> bytes:
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(rest) < length:
        rest += conn.recv(65536)
    conn.close()
    return head + b"\r\n\r\n" + rest


def test_email_consumer_survives_kill_9_without_loss_or_duplicates(service_env, tmp_path):
    users = start_service("user-service", service_env, tmp_path)
    notifications = start_service("notification-service", service_env, tmp_path)
    emails = [unique_email("crash") for _ in range(12)]
    try:
        for i, email in enumerate(emails):
            status, _ = request_json("POST", f"{users.url}/v1/auth/register",
                                     {"email": email, "password": PASSWORD, "name": f"N{i}"})
            assert status == 202
            if i == 5:
                notifications.stop(signal.SIGKILL)  # dies mid-stream, no clean shutdown
        notifications = start_service("notification-service", service_env, tmp_path)
        for email in emails:
            eventually(lambda email=email: outbox(notifications, email), timeout=20, what=f"email to {email}")
        for email in emails:
            assert len(outbox(notifications, email)) == 1, f"{email} got a duplicate"
    finally:
        users.stop()
        notifications.stop()


def test_tokens_and_passwords_never_reach_logs_or_metrics(service_env, tmp_path):
    users = start_service("user-service", service_env, tmp_path)
    notifications = start_service("notification-service", service_env, tmp_path)
    try:
        email = unique_email("secret")
        request_json("POST", f"{users.url}/v1/auth/register", {"email": email, "password": PASSWORD, "name": "S"})
        (message,) = eventually(lambda: outbox(notifications, email), what="verification email")
        token = re.search(r"token=([\w-]+)", message["text"]).group(1)
        assert request_json("POST", f"{users.url}/v1/auth/verify-email", {"token": token, "password": PASSWORD})[0] == 200
        status, tokens = request_json("POST", f"{users.url}/v1/auth/login", {"email": email, "password": PASSWORD})
        assert status == 200
        request_json("POST", f"{users.url}/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
        for service in (users, notifications):
            metrics = http_text(service.ops_url + "/metrics")
            assert 'route="/v1/auth/register"' in metrics or service is notifications
            for secret in (token, PASSWORD, tokens["access_token"], tokens["refresh_token"]):
                assert secret not in service.log(), f"{service.name} logged a secret"
                assert secret not in metrics
    finally:
        users.stop()
        notifications.stop()


def _series(metrics: str, name: str) -> set[str]:
    return {line.split(" ")[0] for line in metrics.splitlines() if line.startswith(name + "{")}


def test_metrics_use_route_templates_so_cardinality_stays_bounded(service_env, tmp_path):
    users = start_service("user-service", service_env, tmp_path)
    try:
        http_status(f"{users.url}/v1/no-such-thing/warm-up")
        before = _series(http_text(users.ops_url + "/metrics"), "requests_total")
        for i in range(50):  # a scanner's worth of distinct paths and query strings
            http_status(f"{users.url}/v1/no-such-thing/{i}?q={i}")
            http_status(f"{users.url}/v1/users/{i}")
        request_json("GET", f"{users.url}/v1/users/me")
        metrics = http_text(users.ops_url + "/metrics")
        after = _series(metrics, "requests_total")
        assert len(after - before) <= 2, after - before  # only /v1/users/me's 401 is new
        assert 'route="<unmatched>"' in metrics and "no-such-thing" not in metrics
        assert re.search(r'requests_total\{method="GET",route="/v1/users/me",service="user-service",status="401"\} 1\.0', metrics)
        assert 'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/users/me"' in metrics
        assert 'db_pool_connections{service="user-service",state="idle"}' in metrics
        assert 'redis_pool_connections{service="user-service",state="in_use"}' in metrics
    finally:
        users.stop()


def test_reload_serves_both_ports_and_restarts_on_a_source_change(service_env, tmp_path):
    """`prog serve --reload`, as the compose stack runs it: ports from PORT and OPS_PORT."""
    watched = tmp_path / "src"
    watched.mkdir()
    port, ops_port = free_port(), free_port()
    assert port != ops_port
    ready = f"http://127.0.0.1:{ops_port}/readiness"
    env = {**os.environ, **service_env, "PORT": str(port), "OPS_PORT": str(ops_port), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "reload.log", "wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "prognetwork", "serve", "notification-service", "--reload", "--reload-dir", str(watched)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    watcher = psutil.Process(supervisor.pid)
    try:
        eventually(lambda: supervisor.poll() is not None or http_status(ready) == 200, timeout=30, what="first start")
        assert supervisor.poll() is None, (tmp_path / "reload.log").read_text()
        (first,) = watcher.children()
        assert http_status(f"http://127.0.0.1:{port}/readiness") == 404  # the API port has no operational path
        assert http_status(f"http://127.0.0.1:{port}/v1/dev/outbox?to=nobody@example.com") == 200

        (watched / "edited.py").write_text("edited = True\n")
        (second,) = eventually(lambda: [c for c in watcher.children() if c.pid != first.pid], timeout=20,
                               what="a new service process after the change")
        assert not first.is_running()
        eventually(lambda: http_status(ready) == 200, timeout=30, what="ready again after the restart")

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(20) == 0, (tmp_path / "reload.log").read_text()[-2000:]
        assert not second.is_running()
    finally:
        for child in watcher.children(recursive=True) if watcher.is_running() else []:
            child.kill()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(5)
