"""The settings every process shares, loaded from the environment; each service extends them.

`PROG_ENV` selects the environment. Development works with no configuration at all;
staging and production refuse to start until `problems()` is empty, and it lists every
problem at once so an operator fixes them in one pass. A service's own settings live in its
package (`<service>/settings.py`, a subclass adding fields and `own_problems()`); what it needs
from outside (PostgreSQL, Redis, secrets) is on its `ServiceSpec`, which `problems()` is given.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from functools import cached_property, partial
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from prognetwork.kit.secrets import (
    AWS_REGION_MISSING,
    AwsSecretsManagerSource,
    Secrets,
    SecretsUnavailable,
    build_secrets,
)

Environment = Literal["development", "staging", "production"]

# Values that mean "somebody forgot to set this": refused outside development.
PLACEHOLDER = re.compile(
    r"\b(change-?me|placeholder|example|dummy|todo|xxx+)\b|\.\.\.|^(sg\.test|pk_test|sk_test)"
)
WEAK_DB_PASSWORDS = {"", "postgres", "password", "secret", "admin"}

DEV_DATABASE_URL = "postgresql://localhost:5432/prog_dev"
DEV_REDIS_URL = "redis://localhost:6379/0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    env: Environment = Field("development", alias="PROG_ENV")
    debug: bool = Field(False, alias="PROG_DEBUG")
    state_dir: Path = Field(Path(".prog"), alias="PROG_STATE_DIR")

    database_url: SecretStr | None = Field(None, alias="DATABASE_URL")
    redis_url: SecretStr | None = Field(None, alias="REDIS_URL")
    # A process keeps up to 2 × DB_POOL_SIZE connections once a burst has opened them (kit.db),
    # plus one each for the event sequencer and every LISTEN: budget replicas × (2 × this + 2)
    # against the server's max_connections.
    db_pool_size: int = Field(20, alias="DB_POOL_SIZE", ge=1, le=200)

    log_level: str = Field("INFO", alias="LOG_LEVEL")
    log_format: Literal["json", "console"] = Field("json", alias="LOG_FORMAT")

    # Who issues access tokens, for whom, and where verifiers fetch the issuer's public keys.
    jwt_issuer: str = Field("http://localhost:8000", alias="JWT_ISSUER")
    jwt_audience: str = Field("prognetwork", alias="JWT_AUDIENCE")
    jwks_url: str = Field("http://127.0.0.1:3007/.well-known/jwks.json", alias="JWKS_URL")
    jwks_refresh_seconds: float = Field(300.0, alias="JWKS_REFRESH_SECONDS", gt=0)

    # env: the environment; file: SECRETS_DIR; aws: the AWS Secrets Manager secret
    # SECRETS_AWS_SECRET_ID (default prognetwork/<PROG_ENV>/app), a JSON object of name: value.
    # With file or aws, DATABASE_URL and REDIS_URL are read from there too, for each new
    # connection (kit/credentials.py), so a rotated password needs no restart.
    secrets_backend: Literal["env", "file", "aws"] = Field("env", alias="SECRETS_BACKEND")
    secrets_dir: Path = Field(Path("/run/secrets/prognetwork"), alias="SECRETS_DIR")
    secrets_cache_ttl_seconds: float = Field(300.0, alias="SECRETS_CACHE_TTL_SECONDS", ge=0)
    secrets_aws_secret_id: str | None = Field(None, alias="SECRETS_AWS_SECRET_ID")
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))

    max_body_bytes: int = Field(1 << 20, alias="MAX_BODY_BYTES", ge=1024)

    # Graceful shutdown: after SIGTERM readiness fails at once; the listener keeps accepting
    # for `drain` seconds so load balancers notice, then in-flight work gets `timeout` seconds.
    shutdown_drain_seconds: float | None = Field(None, alias="SHUTDOWN_DRAIN_SECONDS", ge=0)
    shutdown_timeout_seconds: float = Field(25.0, alias="SHUTDOWN_TIMEOUT_SECONDS", ge=0)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: IPs and CIDR ranges, comma
    # separated. None by default: the client address (rate limits, login throttling) is the
    # connection's own unless it comes from a proxy named here.
    forwarded_allow_ips: str = Field("", alias="FORWARDED_ALLOW_IPS")

    # Request line + headers: refused with 431 while being parsed, past either limit.
    max_header_bytes: int = Field(32 * 1024, alias="MAX_HEADER_BYTES", ge=1024, le=1 << 20)
    max_header_count: int = Field(100, alias="MAX_HEADER_COUNT", ge=10, le=1000)

    @property
    def trusted_proxies(self) -> list[str]:
        return [entry.strip() for entry in self.forwarded_allow_ips.split(",") if entry.strip()]

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def drain_seconds(self) -> float:
        if self.shutdown_drain_seconds is not None:
            return self.shutdown_drain_seconds
        return 0.0 if self.is_development else 5.0

    @property
    def database_dsn(self) -> str:
        """The PostgreSQL URL as libpq/asyncpg spell it (`postgresql://…`): the secret store's
        current DATABASE_URL (file, aws), else the setting."""
        return libpq_url(self._connection_url("DATABASE_URL", self.database_url) or DEV_DATABASE_URL)

    @property
    def redis_dsn(self) -> str:
        return self._connection_url("REDIS_URL", self.redis_url) or DEV_REDIS_URL

    def _connection_url(self, name: str, configured: SecretStr | None) -> str | None:
        if self.secrets_backend == "env":
            return configured.get_secret_value() if configured else None
        value = self.secrets.get(name)  # the store, then the setting (a ConfiguredSource)
        return value.get_secret_value() if value else None

    @property
    def aws_secret_id(self) -> str:
        """The AWS Secrets Manager secret holding this environment's secrets."""
        return self.secrets_aws_secret_id or f"prognetwork/{self.env}/app"

    @cached_property
    def secrets(self) -> Secrets:
        configured = {
            "DATABASE_URL": self.database_url.get_secret_value() if self.database_url else None,
            "REDIS_URL": self.redis_url.get_secret_value() if self.redis_url else None,
        }
        return build_secrets(
            self.secrets_backend,
            self.secrets_dir,
            self.secrets_cache_ttl_seconds,
            aws_secret_id=self.aws_secret_id,
            aws_region=self.aws_region,
            configured=configured,
        )

    def problems(self, needs: Iterable[str] = (), secrets: Iterable[str] = ()) -> list[str]:
        """Everything that makes this configuration unfit for its environment, for a service that
        needs `needs` (postgres, redis) and reads `secrets` (see its ServiceSpec)."""
        if self.is_development:
            return []
        needs = set(needs)
        found: list[str] = []
        if self.debug:
            found.append("PROG_DEBUG must be off outside development")
        if self.log_format != "json":
            found.append("LOG_FORMAT must be json outside development (logs are shipped as JSON)")
        if self.secrets_backend == "aws" and not self.aws_region:
            found.append(AWS_REGION_MISSING)
        if "postgres" in needs:
            found += self._unreadable(
                lambda: _database_problems(self._stored("DATABASE_URL", self.database_url), self.env)
            )
        if "redis" in needs:
            found += self._unreadable(
                lambda: _redis_problems(self._stored("REDIS_URL", self.redis_url), self.env)
            )
        found += https_problems("JWT_ISSUER", self.jwt_issuer)
        found += _forwarded_problems(self.trusted_proxies)
        found += self._unreadable(self.own_problems)
        for secret in secrets:
            found += self._unreadable(partial(_secret_problems, self.secrets, secret))
        return list(dict.fromkeys(found))  # a store that cannot be read is said once

    def _stored(self, name: str, configured: SecretStr | None) -> SecretStr | None:
        url = self._connection_url(name, configured)
        return SecretStr(url) if url else None

    def _unreadable(self, check: Callable[[], list[str]]) -> list[str]:
        """`check`'s problems, or the one line saying why the secret store cannot be read."""
        try:
            return check()
        except SecretsUnavailable as exc:
            return [str(exc)]

    def own_problems(self) -> list[str]:
        """A service's settings add the checks of their own fields here (outside development only)."""
        return []


def https_problems(name: str, value: str) -> list[str]:
    """A public URL outside development: https, and not this machine."""
    if not value.startswith("https://"):
        return [f"{name} must be an https:// URL outside development (got {value!r})"]
    if any(m in value.lower() for m in ("localhost", "127.0.0.1")):
        return [f"{name} must not point at localhost outside development"]
    return []


def _database_problems(url: SecretStr | None, env: str) -> list[str]:
    if url is None:
        return ["DATABASE_URL is required outside development"]
    parts = urlsplit(url.get_secret_value())
    found = []
    if parts.scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        found.append("DATABASE_URL must be a postgresql:// URL")
    if (parts.password or "") in WEAK_DB_PASSWORDS and "host=/" not in (parts.query or ""):
        found.append("DATABASE_URL has an empty or default password")
    if env == "production":
        query = parse_qs(parts.query)
        mode = (query.get("sslmode") or query.get("ssl") or [""])[0]
        if mode not in ("require", "verify-ca", "verify-full"):
            found.append("DATABASE_URL must set sslmode=require (or verify-full) in production")
    return found


def _forwarded_problems(trusted: list[str]) -> list[str]:
    if not trusted:
        return [
            "FORWARDED_ALLOW_IPS is required outside development: the proxy addresses or CIDR ranges "
            "whose X-Forwarded-For is believed (the gateway's: the edge proxy's; the services': the gateway's)"
        ]
    found = []
    for entry in trusted:
        try:
            network = ipaddress.ip_network(entry)  # strict, as uvicorn parses it: host bits must be zero
        except ValueError:
            if entry == "*":
                found.append("FORWARDED_ALLOW_IPS must not be *: every client could pick its own address")
            else:
                found.append(f"FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or a CIDR range")
            continue
        if network.prefixlen == 0:
            found.append(
                f"FORWARDED_ALLOW_IPS must not trust {entry}: every client could pick its own address"
            )
    return found


def _redis_problems(url: SecretStr | None, env: str) -> list[str]:
    if url is None:
        return ["REDIS_URL is required outside development"]
    scheme = urlsplit(url.get_secret_value()).scheme
    if scheme not in ("redis", "rediss", "unix"):
        return ["REDIS_URL must be a redis:// or rediss:// URL"]
    if env == "production" and scheme != "rediss":
        return ["REDIS_URL must use TLS (rediss://) in production"]
    return []


def libpq_url(url: str) -> str:
    """`postgresql+asyncpg://` and `postgres://` spelled as libpq and asyncpg spell it (and the
    SQLAlchemy dialect's `ssl=` query parameter as `sslmode=`: asyncpg would send an unknown
    parameter to the server as a setting, which refuses the login)."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql://" + url[len(prefix) :]
            break
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if any(key == "ssl" for key, _ in query):
        query = [("sslmode" if key == "ssl" else key, value) for key, value in query]
        url = urlunsplit(parts._replace(query=urlencode(query)))
    return url


def _secret_problems(secrets: Secrets, name: str) -> list[str]:
    value = secrets.get(name)
    if value is None:
        store = secrets.sources[0]
        if isinstance(store, AwsSecretsManagerSource):
            return [
                f"secret {name} is missing (add it to {store} as a property, or set it in the environment)"
            ]
        return [f"secret {name} is missing (set it in the environment or the secrets directory)"]
    text = value.get_secret_value().strip().lower()
    if len(text) < 16 or PLACEHOLDER.search(text):
        return [f"secret {name} looks like a placeholder or test value"]
    return []
