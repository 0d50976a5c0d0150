"""The README's first command: `prog up` with embedded PostgreSQL and Redis, and a newcomer's flow."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from prognetwork.registry import services
from tests.helpers.accounts import unique_email
from tests.helpers.http import http_status, request_json
from tests.helpers.paths import ROOT
from tests.helpers.polling import eventually

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"


def start_up(state_dir, offset: int, log_path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PROG_ENV")}
    env.update(PROG_STATE_DIR=str(state_dir), PROG_PORT_OFFSET=str(offset), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "prognetwork", "up", *args], env=env, cwd=ROOT,
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
    )


def stop_up(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def billing_walkthrough(gateway: str, email: str, stripe_fake: str) -> None:
    """The README's tenant and billing flow through the gateway's port, with the Stripe fake
    `prog up` started: its webhooks reach billing through the gateway's public route."""
    status, tokens = request_json("POST", gateway + "/api/v1/auth/login", {"email": email, "password": PASSWORD})
    assert status == 200, tokens
    status, tenant = request_json("POST", gateway + "/api/v1/tenants", {"name": "Analytical Engines"},
                                  headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert status == 201 and tenant["role"] == "owner", tenant
    status, switched = request_json("POST", gateway + "/api/v1/auth/switch-tenant",
                                    {"refresh_token": tokens["refresh_token"], "tenant_id": tenant["id"]})
    assert status == 200, switched
    auth = {"Authorization": f"Bearer {switched['access_token']}"}
    status, plans = request_json("GET", gateway + "/api/v1/billing/plans")
    assert status == 200 and {p["name"] for p in plans["plans"]} >= {"free", "pro"}
    status, checkout = request_json("POST", gateway + "/api/v1/billing/checkout", {"plan": "pro"}, headers=auth)
    assert status == 200, checkout
    # The checkout page, as a person's browser would submit it (the fake answers 303 onwards).
    page = checkout["url"].replace("http://localhost:", "http://127.0.0.1:")
    assert page.startswith(stripe_fake)
    with httpx.Client(timeout=10) as client:
        assert client.post(page, data={"outcome": "paid"}).status_code == 303

    def subscription() -> dict:
        return request_json("GET", gateway + "/api/v1/billing/subscription", headers=auth)[1]

    active = eventually(lambda: (s := subscription())["status"] == "active" and s, what="an active subscription")
    assert active["plan"] == "pro" and active["seats"] == 20
    # The user service heard billing's entitlements on the event log: the tenant has pro's seats.
    assert eventually(lambda: request_json("GET", f"{gateway}/api/v1/tenants/{tenant['id']}", headers=auth)[1]
                      .get("seats") == 20, what="the tenant's seats from billing")


def first_admin(state, gateway: str, console: str) -> None:
    """The README's way to the console: `prog users create … --role admin` beside a running `prog up`
    (it finds the embedded servers by itself), then that account signs in."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PROG_ENV")}
    email = unique_email("first-admin")
    created = subprocess.run(
        [sys.executable, "-m", "prognetwork", "users", "create", "--email", email, "--password", PASSWORD,
         "--role", "admin"], env={**env, "PROG_STATE_DIR": str(state)}, cwd=ROOT, capture_output=True, text=True,
        timeout=60)
    assert created.returncode == 0, created.stdout + created.stderr
    status, tokens = request_json("POST", gateway + "/api/v1/auth/login", {"email": email, "password": PASSWORD})
    assert status == 200, tokens
    assert request_json("GET", gateway + "/api/v1/admin/users?q=first-admin",
                        headers={"Authorization": f"Bearer {tokens['access_token']}"})[0] == 200
    assert http_status(console + "/login") == 200


def test_prog_up_runs_the_platform_and_keeps_data_across_restarts(tmp_path):
    # Every port (3004…9090 + offset) below the kernel's ephemeral range (32768 up), where the
    # other tests' free ports and outgoing connections come from, so none can be taken meanwhile.
    offset = random.randrange(10000, 23000, 100)
    specs = services()
    gateway = f"http://127.0.0.1:{8000 + offset}"
    users = f"http://127.0.0.1:{3007 + offset}"
    notifications = f"http://127.0.0.1:{3004 + offset}"
    # Each service's /health, /readiness, /metrics and /docs: its port + 1000.
    ops = {"api-gateway": f"http://127.0.0.1:{9000 + offset}", "user-service": f"http://127.0.0.1:{4007 + offset}",
           "notification-service": f"http://127.0.0.1:{4004 + offset}"}
    log_path = tmp_path / "up.log"
    state = tmp_path / "state"
    up = start_up(state, offset, log_path, "--with-monitoring")
    try:
        eventually(lambda: up.poll() is not None or "ProgNetwork is up" in log_path.read_text(errors="replace"),
                   timeout=120, what="prog up to report the platform up")
        assert up.poll() is None, log_path.read_text()
        output = log_path.read_text(errors="replace")
        assert gateway in output and users in output and notifications in output  # prints every service URL
        assert all(url in output for url in ops.values())
        for url, ops_url in zip((gateway, users, notifications), ops.values(), strict=True):
            assert http_status(ops_url + "/readiness") == 200
            assert http_status(url + "/readiness") == 404  # never on the API port
        # Every registered service runs under its name. The services behind the gateway take the
        # client address from its X-Forwarded-For; the gateway itself believes no one's.
        environments = {child.cmdline()[4]: child.environ() for child in psutil.Process(up.pid).children()
                        if child.cmdline()[2:4] == ["prognetwork", "serve"]}
        assert {name: env.get("FORWARDED_ALLOW_IPS") for name, env in environments.items()} == {
            "api-gateway": None, "user-service": "127.0.0.1", "notification-service": "127.0.0.1",
            "event-streaming": "127.0.0.1", "billing-service": "127.0.0.1", "admin-client": "127.0.0.1"}
        assert set(environments) == set(specs)
        # The console's Health page: every ops port in use, and the Prometheus --with-monitoring runs.
        console = environments["admin-client"]
        assert json.loads(console["SERVICE_HEALTH_URLS"]) == {
            name: f"http://127.0.0.1:{spec.ops_port + offset}" for name, spec in specs.items()}
        assert console["PROMETHEUS_URL"] == f"http://127.0.0.1:{9090 + offset}"
        # Each finds the others at <NAME>_URL, and the token issuer's keys at JWKS_URL.
        for env in environments.values():
            assert {f"{spec.env_prefix}_URL": env.get(f"{spec.env_prefix}_URL") for spec in specs.values()} == {
                f"{spec.env_prefix}_URL": f"http://127.0.0.1:{spec.port + offset}" for spec in specs.values()}
            assert env.get("JWKS_URL") == f"{users}/.well-known/jwks.json"
        # --with-monitoring: a real Prometheus, with the rules, scraping every service.
        prometheus = f"http://127.0.0.1:{9090 + offset}"
        assert prometheus in output

        def scraped() -> set[str]:
            targets = request_json("GET", prometheus + "/api/v1/targets")[1]["data"]["activeTargets"]
            return {t["labels"]["job"] for t in targets if t["health"] == "up"}

        # local.yml's jobs are named as the services: `prog up` kept the job of each one it started.
        assert eventually(lambda: scraped() == set(specs), timeout=60, interval=0.5)
        rules = request_json("GET", prometheus + "/api/v1/rules")[1]["data"]["groups"]
        assert any(r["name"] == "ServiceDown" for g in rules for r in g["rules"])

        # The README's flow, through the gateway's port only.
        email = unique_email("newcomer")
        assert request_json("POST", gateway + "/api/v1/auth/register",
                            {"email": email, "password": PASSWORD, "name": "New"})[0] == 202
        messages = eventually(lambda: request_json("GET", f"{gateway}/api/v1/dev/outbox?to={email}")[1],
                              what="verification email")
        token = re.search(r"token=([\w-]+)", messages[0]["text"]).group(1)
        assert request_json("POST", gateway + "/api/v1/auth/verify-email",
                            {"token": token, "password": PASSWORD})[0] == 200
        billing_walkthrough(gateway, email, f"http://127.0.0.1:{12111 + offset}")
        first_admin(state, gateway, f"http://127.0.0.1:{3000 + offset}")
    finally:
        code = stop_up(up)
    assert code == 0, log_path.read_text()[-3000:]
    for url in (gateway, users, notifications, *ops.values()):
        assert http_status(url + "/health") is None
    assert http_status(f"http://127.0.0.1:{9090 + offset}/-/healthy") is None

    # A second `prog up` finds the same data.
    up = start_up(state, offset, log_path)
    try:
        eventually(lambda: up.poll() is not None or http_status(ops["api-gateway"] + "/readiness") == 200, timeout=120)
        status, tokens = request_json("POST", gateway + "/api/v1/auth/login", {"email": email, "password": PASSWORD})
        assert status == 200, tokens
        status, me = request_json("GET", gateway + "/api/v1/users/me",
                                  headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert status == 200 and me["email"] == email
    finally:
        assert stop_up(up) == 0
    assert "stopped." in log_path.read_text()
