"""The secrets backend in settings: which AWS secret, a missing region said once, connection URLs
read through the store (file, aws) or once from the environment (env), as before."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prognetwork.kit import credentials
from prognetwork.kit.secrets import AWS_REGION_MISSING
from prognetwork.kit.settings import Settings


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("PROG_", "DATABASE_", "REDIS_", "JWT_", "SECRETS_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "no-secrets"))


def test_the_aws_secret_is_the_environments_unless_named():
    assert Settings(SECRETS_BACKEND="aws").aws_secret_id == "prognetwork/development/app"
    assert Settings(PROG_ENV="staging", SECRETS_BACKEND="aws").aws_secret_id == "prognetwork/staging/app"
    named = Settings(PROG_ENV="production", SECRETS_BACKEND="aws", SECRETS_AWS_SECRET_ID="shared/prod")
    assert named.aws_secret_id == "shared/prod"
    assert Settings(AWS_DEFAULT_REGION="eu-west-1").aws_region == "eu-west-1"
    assert Settings(AWS_REGION="us-east-2", AWS_DEFAULT_REGION="eu-west-1").aws_region == "us-east-2"


def test_a_missing_region_is_one_problem_and_nothing_is_guessed_about_the_secrets():
    settings = Settings(PROG_ENV="staging", SECRETS_BACKEND="aws")
    problems = settings.problems({"postgres", "redis"}, ("JWT_SIGNING_KEYS", "SENDGRID_API_KEY"))
    assert problems.count(AWS_REGION_MISSING) == 1
    assert not any("DATABASE_URL" in p or "REDIS_URL" in p or "is missing" in p for p in problems), problems


def test_with_a_secret_store_connection_urls_are_read_from_it_each_time(tmp_path):
    store = tmp_path / "secrets"
    store.mkdir()
    settings = Settings(SECRETS_BACKEND="file", SECRETS_DIR=str(store), SECRETS_CACHE_TTL_SECONDS="0",
                        DATABASE_URL="postgresql://app:configured@db/prog", REDIS_URL="redis://cache/0")
    assert settings.database_dsn == "postgresql://app:configured@db/prog"  # the store has none: the setting
    (store / "DATABASE_URL").write_text("postgres://app:first@db/prog")
    (store / "REDIS_URL").write_text("redis://:first@cache/0")
    assert settings.database_dsn == "postgresql://app:first@db/prog"
    (store / "DATABASE_URL").write_text("postgresql://app:rotated@db/prog")
    assert settings.database_dsn == "postgresql://app:rotated@db/prog"
    assert settings.redis_dsn == "redis://:first@cache/0"
    assert credentials.rotates(settings) and credentials.postgres_connector(settings) is not None


def test_without_a_secret_store_connection_urls_are_the_settings_as_before(tmp_path):
    store = tmp_path / "secrets"
    store.mkdir()
    (store / "DATABASE_URL").write_text("postgresql://app:stored@db/prog")
    settings = Settings(SECRETS_DIR=str(store), DATABASE_URL="postgresql://app:inline@db/prog")
    assert settings.database_dsn == "postgresql://app:inline@db/prog"
    assert not credentials.rotates(settings)
    assert credentials.postgres_connector(settings) is None
    assert credentials.redis_auth(settings) == ("redis://localhost:6379/0", None)


@pytest.mark.parametrize(
    "url,expected",
    [
        ("redis://cache:6379/0", ()),
        ("redis://:s3cr%40t@cache:6379/0", ("s3cr@t",)),
        ("rediss://prog:s3cr%40t@cache:6379/0", ("prog", "s3cr@t")),
        ("redis://prog@cache:6379/0", ()),
    ],
)
def test_redis_credentials_come_from_the_url(url, expected):
    assert credentials.redis_credentials(url) == expected


def test_the_redis_client_is_created_without_the_credentials_it_reads_per_connection(tmp_path):
    store = tmp_path / "secrets"
    store.mkdir()
    (store / "REDIS_URL").write_text("rediss://prog:pw@[::1]:6380/2")
    settings = Settings(SECRETS_BACKEND="file", SECRETS_DIR=str(store))
    url, auth = credentials.redis_auth(settings)
    assert url == "rediss://[::1]:6380/2"
    assert auth is not None and set(auth) == {"credential_provider", "redis_connect_func"}
    assert credentials.without_credentials("unix:///run/redis.sock?db=0") == "unix:///run/redis.sock?db=0"


def test_config_check_names_the_missing_region_in_one_line(tmp_path):
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    env = {**base, "COLUMNS": "400", "PROG_ENV": "staging", "SECRETS_BACKEND": "aws"}
    result = subprocess.run([sys.executable, "-m", "prognetwork", "config", "check", "--service", "user-service"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert [line for line in result.stdout.splitlines() if "AWS" in line] == [
        f"  - {AWS_REGION_MISSING} (user-service)"]


def test_a_rotating_database_url_keeps_its_tls_setting_as_asyncpg_spells_it():
    """`ssl=` (the SQLAlchemy dialect's spelling, accepted by the settings) would reach the
    server as an unknown setting through a direct asyncpg connect, which refuses the login."""
    from prognetwork.kit.settings import libpq_url

    assert libpq_url("postgresql+asyncpg://u:p@db:5432/app?ssl=verify-full") == (
        "postgresql://u:p@db:5432/app?sslmode=verify-full"
    )
    assert libpq_url("postgresql://u@/app?host=/run/pg") == "postgresql://u@/app?host=/run/pg"
