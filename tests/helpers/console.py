"""The admin console under test: the platform as real processes behind it, accounts with platform
roles (made as the README says, `prog users create`), and a signed-in HTTP client of the console."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers import prometheus as prometheus_helpers
from tests.helpers.monitoring import install_monitoring_tools
from tests.helpers.paths import ROOT
from tests.helpers.ports import free_port
from tests.helpers.processes import ServiceProcess, issuer_env, start_service

PASSWORD = "correct horse battery staple"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
# One client address for every request of a run: nothing here should be throttled.
HIGH_LIMITS = json.dumps({name: {"requests": 1_000_000, "window_seconds": 60}
                          for name in ("auth", "anonymous", "default")})
BEHIND_THE_GATEWAY = ("notification-service", "event-streaming", "billing-service")


def stack_env(database_url: str, redis_url: str, signing_key: str, directory: Path) -> dict[str, str]:
    secrets = directory / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "JWT_SIGNING_KEYS").write_text(signing_key)
    return {
        "PROG_ENV": "development",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PROG_STATE_DIR": str(directory / "state"),
        "SECRETS_BACKEND": "file",
        "SECRETS_DIR": str(secrets),
        "SECRETS_CACHE_TTL_SECONDS": "0",
        "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
        "GATEWAY_RATE_LIMITS": HIGH_LIMITS,
        "LOG_LEVEL": "INFO",
    }


@dataclass
class Stack:
    """The services the console needs, as processes, and the console itself."""

    env: dict[str, str]
    logs: Path
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.processes[name]

    @property
    def gateway(self) -> str:
        return self.processes["api-gateway"].url

    @property
    def console(self) -> str:
        return self.processes["admin-client"].url

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()

    def logs_tail(self) -> str:
        return "\n".join(f"--- {name} ---\n{p.log()[-2000:]}" for name, p in self.processes.items())


def start_stack(env: dict[str, str], logs: Path, behind: tuple[str, ...] = BEHIND_THE_GATEWAY,
                console_env: dict[str, str] | None = None) -> Stack:
    """The user service, then the services `behind` the gateway (at once), the gateway and the console."""
    stack = Stack(env, logs)
    try:
        users = stack.processes["user-service"] = start_service("user-service", env, logs)
        issuer = issuer_env(users.url)
        with ThreadPoolExecutor(max_workers=len(behind) or 1) as pool:
            started = {name: pool.submit(start_service, name, {**env, **issuer}, logs) for name in behind}
            for name, future in started.items():
                stack.processes[name] = future.result()
        upstreams = {f"{name.upper().replace('-', '_')}_URL": stack.processes[name].url for name in behind}
        stack.processes["api-gateway"] = start_service("api-gateway", {**env, **issuer, **upstreams}, logs)
        port, ops_port = free_port(), free_port()
        health = {name: process.ops_url for name, process in stack.processes.items()}
        health["admin-client"] = f"http://127.0.0.1:{ops_port}"
        console = {**env, **issuer, "API_GATEWAY_URL": stack.gateway, "SERVICE_HEALTH_URLS": json.dumps(health),
                   **(console_env or {})}
        stack.processes["admin-client"] = start_service("admin-client", console, logs, port=port, ops_port=ops_port)
    except BaseException:
        stack.stop()
        raise
    return stack


def create_account(env: dict[str, str], email: str, role: str, password: str = PASSWORD, name: str | None = None) -> str:
    """A verified account with a platform role, made the README's way (`prog users create`); its id."""
    command = [sys.executable, "-m", "prognetwork", "users", "create", "--email", email, "--password", password,
               "--role", role]
    if name:
        command += ["--name", name]
    result = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"\(([0-9a-f-]{36})\)", result.stdout)
    assert found, result.stdout
    return found.group(1)


def api_login(gateway: str, email: str, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(f"{gateway}/api/v1/auth/login", json={"email": email, "password": password}, timeout=10)


def csrf_of(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def console_client(console: str) -> httpx.Client:
    """An HTTP client of the console that keeps its cookies and does not follow redirects."""
    return httpx.Client(base_url=console, timeout=15, follow_redirects=False)


def sign_in(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    """The sign-in form, filled as a browser would (its CSRF token and cookie included)."""
    page = client.get("/login")
    assert page.status_code == 200, page.text
    return client.post("/login", data={"csrf_token": csrf_of(page.text), "email": email, "password": password,
                                       "next": "/users"})


def start_prometheus(port: int, targets: dict[str, str], directory: Path) -> prometheus_helpers.Prometheus:
    """A real Prometheus on `port` scraping each service's ops address every second (job = service name)."""
    install_monitoring_tools()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": name, "static_configs": [{"targets": [address]}]}
                           for name, address in targets.items()],
    }
    return prometheus_helpers.start_prometheus(config, directory, port)
