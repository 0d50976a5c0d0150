"""Configuration per environment: development just works; staging/production list every problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prognetwork.kit.settings import Settings
from prognetwork.registry import service, services
from prognetwork.users.keys import generate_pem

CLEAN = {k: "" for k in ("DATABASE_URL", "REDIS_URL", "JWT_SIGNING_KEYS", "SENDGRID_API_KEY")}


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("PROG_", "DATABASE_", "REDIS_", "JWT_", "SENDGRID", "STRIPE", "APP_URL", "SECRETS_",
                            "FORWARDED_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "no-secrets"))


def good_production(tmp_path) -> dict[str, str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "JWT_SIGNING_KEYS").write_text(generate_pem())
    (secrets / "SENDGRID_API_KEY").write_text("SG.4fQ1c0b2Zt9xv8Lr3mWq.Jp7Ks2Vn5Hc8Rd1Tg4Yb6Ne9Ua3")
    (secrets / "STRIPE_SECRET_KEY").write_text("sk_live_51Hx4fQ1c0b2Zt9xv8Lr3mWqJp7Ks2Vn5Hc8Rd1Tg4Yb6")
    (secrets / "STRIPE_WEBHOOK_SECRET").write_text("whsec_Jp7Ks2Vn5Hc8Rd1Tg4Yb6Ne9Ua3")
    return {
        "PROG_ENV": "production",
        "DATABASE_URL": "postgresql://prog:Vq8tX2mZr5Lw@db.internal:5432/prog?sslmode=require",
        "REDIS_URL": "rediss://cache.internal:6379/0",
        "APP_URL": "https://app.prognetwork.com",
        "JWT_ISSUER": "https://api.prognetwork.com",
        "SECRETS_BACKEND": "file",
        "SECRETS_DIR": str(secrets),
        "FORWARDED_ALLOW_IPS": "10.0.0.0/16",
        "BILLING_PLANS": json.dumps([
            {"name": "free", "seats": 3},
            {"name": "pro", "price_id": "price_1QpR0Zt9xv8Lr3mW", "seats": 20},
        ]),
    }


def every_problem(**env: str) -> list[str]:
    """What `prog config check` lists: every problem of every registered service, each once."""
    found: dict[str, None] = {}
    for spec in services().values():
        found.update(dict.fromkeys(spec.settings(**env).problems(spec.needs, spec.secrets)))
    return list(found)


def test_development_needs_no_configuration():
    settings = Settings()
    assert settings.env == "development"
    assert every_problem() == []
    assert settings.database_dsn == "postgresql://localhost:5432/prog_dev"
    assert settings.redis_dsn == "redis://localhost:6379/0"
    assert settings.drain_seconds == 0


def test_staging_with_nothing_set_lists_every_problem_at_once():
    text = "\n".join(every_problem(PROG_ENV="staging"))
    for expected in ("DATABASE_URL is required", "REDIS_URL is required", "APP_URL must be an https://",
                     "JWT_ISSUER must be an https://", "secret JWT_SIGNING_KEYS is missing",
                     "secret SENDGRID_API_KEY is missing"):
        assert expected in text, text
    assert Settings(PROG_ENV="staging").drain_seconds == 5


def test_production_accepts_a_complete_configuration(tmp_path):
    assert every_problem(**good_production(tmp_path)) == []


@pytest.mark.parametrize(
    "override,expected",
    [
        ({"PROG_DEBUG": "true"}, "PROG_DEBUG must be off"),
        ({"LOG_FORMAT": "console"}, "LOG_FORMAT must be json"),
        ({"APP_URL": "http://app.prognetwork.com"}, "APP_URL must be an https://"),
        ({"JWT_ISSUER": "https://localhost:8000"}, "JWT_ISSUER must not point at localhost"),
        ({"REDIS_URL": "redis://cache.internal:6379/0"}, "REDIS_URL must use TLS"),
        ({"DATABASE_URL": "postgresql://prog:postgres@db.internal/prog?sslmode=require"}, "default password"),
        ({"DATABASE_URL": "postgresql://prog:Vq8tX2mZr5Lw@db.internal/prog"}, "sslmode=require"),
        ({"DATABASE_URL": "mysql://prog:Vq8tX2mZr5Lw@db/prog?sslmode=require"}, "must be a postgresql://"),
    ],
)
def test_production_refuses_unsafe_values(tmp_path, override, expected):
    problems = every_problem(**{**good_production(tmp_path), **override})
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "value,expected",
    [
        ("", "FORWARDED_ALLOW_IPS is required outside development"),
        ("*", "FORWARDED_ALLOW_IPS must not be *"),
        ("10.0.0.0/16,0.0.0.0/0", "must not trust 0.0.0.0/0"),
        ("::/0", "must not trust ::/0"),
        ("10.0.0.0/16, gateway", "'gateway' is not an IP address or a CIDR range"),
        ("10.0.0.1/16", "'10.0.0.1/16' is not an IP address or a CIDR range"),  # host bits: uvicorn ignores it
    ],
)
def test_trusted_proxies_are_named_outside_development(tmp_path, value, expected):
    problems = every_problem(**{**good_production(tmp_path), "FORWARDED_ALLOW_IPS": value})
    assert [p for p in problems if "FORWARDED_ALLOW_IPS" in p] == [next(p for p in problems if expected in p)], problems


def test_trusted_proxies_accept_addresses_and_ranges(tmp_path):
    settings = Settings(**{**good_production(tmp_path), "FORWARDED_ALLOW_IPS": " 10.0.0.0/16, 192.0.2.7,fd00::/8 "})
    assert settings.problems() == []
    assert settings.trusted_proxies == ["10.0.0.0/16", "192.0.2.7", "fd00::/8"]
    assert Settings(FORWARDED_ALLOW_IPS="*").problems() == []  # development trusts what it is told


def test_a_services_own_settings_are_checked_for_that_service_only(tmp_path):
    env = {**good_production(tmp_path), "APP_URL": "http://app.prognetwork.com"}
    users = service("user-service")
    assert any("APP_URL" in p for p in users.settings(**env).problems(users.needs, users.secrets))
    gateway = service("api-gateway")
    assert gateway.settings(**env).problems(gateway.needs, gateway.secrets) == []


@pytest.mark.parametrize("value", ["SG.test_abcdefghijklmnop", "changeme", "placeholder-value-here-123", "short"])
def test_placeholder_secrets_refused(tmp_path, value):
    env = good_production(tmp_path)
    (tmp_path / "secrets" / "SENDGRID_API_KEY").write_text(value)
    problems = every_problem(**env)
    assert any("SENDGRID_API_KEY" in p for p in problems), problems


def test_problems_can_be_limited_to_one_service():
    notifications = service("notification-service")
    problems = notifications.settings(PROG_ENV="production").problems(notifications.needs, notifications.secrets)
    # Other services' secrets are not its problem (Redis is: it checks signed-out sessions too).
    assert not any("JWT_SIGNING_KEYS" in p or "STRIPE" in p for p in problems)
    assert any("REDIS_URL" in p for p in problems)
    assert any("SENDGRID_API_KEY" in p for p in problems)


def test_secrets_never_show_in_repr(tmp_path):
    settings = Settings(**good_production(tmp_path))
    shown = repr(settings) + str(settings.model_dump())
    assert "Vq8tX2mZr5Lw" not in shown
    assert "SG.4fQ1" not in repr(settings.secrets.get("SENDGRID_API_KEY"))


def run_prog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [sys.executable, "-m", "prognetwork", *args], env={**base, **(env or {})},
        capture_output=True, text=True, timeout=60,
    )


def test_config_check_cli_passes_in_development():
    result = run_prog("config", "check")
    assert result.returncode == 0, result.stderr
    assert "development: configuration OK" in result.stdout


def test_config_check_cli_lists_problems_and_exits_1():
    result = run_prog("config", "check", "--env", "production", env={"SECRETS_DIR": "/nonexistent"})
    assert result.returncode == 1
    assert "production:" in result.stdout and "DATABASE_URL is required" in result.stdout
    assert "secret JWT_SIGNING_KEYS is missing" in result.stdout


def test_config_check_cli_accepts_good_production(tmp_path):
    result = run_prog("config", "check", env=good_production(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("value", [None, "*"])
def test_config_check_cli_names_a_missing_or_wildcard_trusted_proxy(tmp_path, value):
    env = {k: v for k, v in good_production(tmp_path).items() if k not in ("FORWARDED_ALLOW_IPS", "DATABASE_URL")}
    if value is not None:
        env["FORWARDED_ALLOW_IPS"] = value
    result = run_prog("config", "check", "--env", "staging", env=env)
    assert result.returncode == 1
    # Listed with the other problems (here: the missing database).
    assert "staging: 2 problem(s)" in result.stdout and "DATABASE_URL is required" in result.stdout
    assert ("FORWARDED_ALLOW_IPS is required" if value is None else "FORWARDED_ALLOW_IPS must not be *") in result.stdout


def test_config_check_cli_rejects_unknown_environment():
    result = run_prog("config", "check", "--env", "prod")
    assert result.returncode == 2
    assert "unknown environment 'prod'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_invalid_value_is_one_clear_line():
    result = run_prog("config", "check", env={"ACCESS_TOKEN_TTL_SECONDS": "soon"})
    assert result.returncode == 2
    assert "ACCESS_TOKEN_TTL_SECONDS" in result.stderr and "integer" in result.stderr


def test_serve_refuses_to_start_in_production_with_problems():
    result = run_prog("serve", "user-service", "--port", "1", env={"PROG_ENV": "production", "SECRETS_DIR": "/nonexistent"})
    assert result.returncode == 2
    assert "refusing to start (production)" in result.stderr and "DATABASE_URL is required" in result.stderr


def test_serve_rejects_unknown_service():
    result = run_prog("serve", "nope")
    assert result.returncode == 2 and "unknown service 'nope'" in result.stderr
