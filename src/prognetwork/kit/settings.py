"""One typed settings object per process, loaded from the environment.

`PROG_ENV` selects the environment. Development works with no configuration at all;
staging and production refuse to start until `problems()` is empty, and it lists every
problem at once so an operator fixes them in one pass.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from prognetwork.kit.secrets import Secrets, build_secrets

Environment = Literal["development", "staging", "production"]

# Default port of each service; `PORT` overrides it for a single process (containers).
SERVICE_PORTS: dict[str, int] = {
    "gateway": 8000,
    "users": 3007,
    "notifications": 3004,
    "streaming": 8001,
}
# The port of each service's operational endpoints (/health, /readiness, /metrics, /docs,
# /openapi.json), apart from its API so only probes and Prometheus reach them; `OPS_PORT`
# overrides it for a single process. The API port + 1000 (billing 4003 and admin 4000 to come).
SERVICE_OPS_PORTS: dict[str, int] = {name: port + 1000 for name, port in SERVICE_PORTS.items()}

# What each service needs from the outside world, for readiness and for validation.
SERVICE_DEPENDENCIES: dict[str, frozenset[str]] = {
    "users": frozenset({"postgres", "redis"}),
    "notifications": frozenset({"postgres"}),
    "gateway": frozenset({"redis"}),
    # Redis holds the signed-out sessions every verifier checks.
    "streaming": frozenset({"postgres", "redis"}),
}

# Secrets each service reads through the secrets provider (never from plain settings).
SERVICE_SECRETS: dict[str, tuple[str, ...]] = {
    "users": ("JWT_SIGNING_KEYS",),
    "notifications": ("SENDGRID_API_KEY",),
}

# Values that mean "somebody forgot to set this": refused outside development.
PLACEHOLDER = re.compile(r"\b(change-?me|placeholder|example|dummy|todo|xxx+)\b|\.\.\.|^(sg\.test|pk_test|sk_test)")
WEAK_DB_PASSWORDS = {"", "postgres", "password", "secret", "admin"}

class Route(BaseModel):
    """One line of the gateway's route table: a path prefix and where it goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(pattern=r"^/")
    upstream: str
    public: bool = False  # no access token needed
    limit: str = "default"  # rate-limit group
    stream: bool = False  # long-lived responses (SSE): no read timeout
    strip_prefix: str = "/api"  # /api/v1/x → upstream /v1/x


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: int = Field(gt=0)
    window_seconds: int = Field(gt=0)


DEFAULT_ROUTES = [
    Route(prefix="/api/v1/auth/register", upstream="users", public=True, limit="auth"),
    Route(prefix="/api/v1/auth/login", upstream="users", public=True, limit="auth"),
    Route(prefix="/api/v1/auth/refresh", upstream="users", public=True, limit="auth"),
    Route(prefix="/api/v1/auth/verify-email", upstream="users", public=True, limit="auth"),
    Route(prefix="/api/v1/auth", upstream="users"),
    Route(prefix="/api/v1/users", upstream="users"),
    Route(prefix="/api/v1/events/stream", upstream="streaming", stream=True),
    Route(prefix="/api/v1/events", upstream="streaming"),
    Route(prefix="/.well-known/jwks.json", upstream="users", public=True, limit="anonymous", strip_prefix=""),
]
# Development only: the email outbox, so a newcomer needs nothing but the gateway's port.
DEVELOPMENT_ROUTES = [Route(prefix="/api/v1/dev", upstream="notifications", public=True, limit="anonymous")]
DEFAULT_RATE_LIMITS = {
    "auth": RateLimit(requests=30, window_seconds=60),
    "anonymous": RateLimit(requests=300, window_seconds=60),
    "default": RateLimit(requests=1200, window_seconds=60),
}

DEV_DATABASE_URL = "postgresql://localhost:5432/prog_dev"
DEV_REDIS_URL = "redis://localhost:6379/0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    env: Environment = Field("development", alias="PROG_ENV")
    debug: bool = Field(False, alias="PROG_DEBUG")
    state_dir: Path = Field(Path(".prog"), alias="PROG_STATE_DIR")

    database_url: SecretStr | None = Field(None, alias="DATABASE_URL")
    redis_url: SecretStr | None = Field(None, alias="REDIS_URL")
    db_pool_size: int = Field(20, alias="DB_POOL_SIZE", ge=1, le=200)

    log_level: str = Field("INFO", alias="LOG_LEVEL")
    log_format: Literal["json", "console"] = Field("json", alias="LOG_FORMAT")

    # Where links in emails point (the admin web client) and who issues tokens.
    app_url: str = Field("http://localhost:3000", alias="APP_URL")
    jwt_issuer: str = Field("http://localhost:8000", alias="JWT_ISSUER")
    jwt_audience: str = Field("prognetwork", alias="JWT_AUDIENCE")
    access_token_ttl_seconds: int = Field(900, alias="ACCESS_TOKEN_TTL_SECONDS", ge=30, le=3600)
    refresh_token_ttl_seconds: int = Field(30 * 86400, alias="REFRESH_TOKEN_TTL_SECONDS", ge=300)
    email_token_ttl_seconds: int = Field(86400, alias="EMAIL_TOKEN_TTL_SECONDS", ge=60)

    # Login throttling (the policy is in README "Sign-in protection"): failures per account from one
    # address or one known device, failures per account from all unknown devices together,
    # attempts per client address, and how long a known device stays known.
    login_failures_per_account: int = Field(5, alias="LOGIN_FAILURES_PER_ACCOUNT", ge=1)
    login_failures_per_account_unknown_devices: int = Field(
        20, alias="LOGIN_FAILURES_PER_ACCOUNT_UNKNOWN_DEVICES", ge=1
    )
    login_failure_window_seconds: int = Field(900, alias="LOGIN_FAILURE_WINDOW_SECONDS", ge=1)
    login_attempts_per_address: int = Field(30, alias="LOGIN_ATTEMPTS_PER_ADDRESS", ge=1)
    login_address_window_seconds: int = Field(300, alias="LOGIN_ADDRESS_WINDOW_SECONDS", ge=1)
    device_token_ttl_seconds: int = Field(90 * 86400, alias="DEVICE_TOKEN_TTL_SECONDS", ge=3600)
    password_reset_ttl_seconds: int = Field(3600, alias="PASSWORD_RESET_TTL_SECONDS", ge=60, le=86400)
    # A registration never verified is deleted after this long (its address is free again before that:
    # registering it anew replaces the unverified account).
    unverified_account_ttl_seconds: int = Field(7 * 86400, alias="UNVERIFIED_ACCOUNT_TTL_SECONDS", ge=3600)

    email_from: str = Field("ProgNetwork <no-reply@prognetwork.dev>", alias="EMAIL_FROM")
    email_max_attempts: int = Field(8, alias="EMAIL_MAX_ATTEMPTS", ge=1)
    sendgrid_host: str = Field("https://api.sendgrid.com", alias="SENDGRID_HOST")
    stripe_publishable_key: str = Field("pk_test_development", alias="STRIPE_PUBLISHABLE_KEY")

    secrets_backend: Literal["env", "file"] = Field("env", alias="SECRETS_BACKEND")
    secrets_dir: Path = Field(Path("/run/secrets/prognetwork"), alias="SECRETS_DIR")
    secrets_cache_ttl_seconds: float = Field(300.0, alias="SECRETS_CACHE_TTL_SECONDS", ge=0)

    # API gateway: where upstreams live and which paths go where (first matching prefix wins).
    users_url: str = Field("http://127.0.0.1:3007", alias="USERS_URL")
    streaming_url: str = Field("http://127.0.0.1:8001", alias="STREAMING_URL")
    notifications_url: str = Field("http://127.0.0.1:3004", alias="NOTIFICATIONS_URL")
    gateway_upstreams: dict[str, str] = Field(default_factory=dict, alias="GATEWAY_UPSTREAMS")
    gateway_routes: list[Route] = Field(default_factory=lambda: list(DEFAULT_ROUTES), alias="GATEWAY_ROUTES")
    gateway_rate_limits: dict[str, RateLimit] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS), alias="GATEWAY_RATE_LIMITS"
    )
    upstream_connect_timeout_seconds: float = Field(2.0, alias="UPSTREAM_CONNECT_TIMEOUT_SECONDS", gt=0)
    upstream_timeout_seconds: float = Field(30.0, alias="UPSTREAM_TIMEOUT_SECONDS", gt=0)
    jwks_refresh_seconds: float = Field(300.0, alias="JWKS_REFRESH_SECONDS", gt=0)

    max_body_bytes: int = Field(1 << 20, alias="MAX_BODY_BYTES", ge=1024)

    # Event streaming: SSE keep-alive comments, frames a subscriber may fall behind before it is
    # cut off, largest payload a producer may publish, and the poll behind LISTEN/NOTIFY.
    stream_heartbeat_seconds: float = Field(15.0, alias="STREAM_HEARTBEAT_SECONDS", gt=0)
    stream_queue_limit: int = Field(1000, alias="STREAM_QUEUE_LIMIT", ge=1)
    stream_max_payload_bytes: int = Field(64 * 1024, alias="STREAM_MAX_PAYLOAD_BYTES", ge=1)
    stream_poll_seconds: float = Field(2.0, alias="STREAM_POLL_SECONDS", gt=0)

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

    @model_validator(mode="after")
    def _routes_are_resolvable(self) -> Settings:
        for route in self.routes:
            if route.upstream not in self.upstreams:
                raise ValueError(f"route {route.prefix} names unknown upstream {route.upstream!r}")
            if route.limit not in self.gateway_rate_limits:
                raise ValueError(f"route {route.prefix} names unknown rate-limit group {route.limit!r}")
        return self

    @property
    def upstreams(self) -> dict[str, str]:
        defaults = {"users": self.users_url, "streaming": self.streaming_url, "notifications": self.notifications_url}
        return {**defaults, **self.gateway_upstreams}

    @property
    def routes(self) -> list[Route]:
        """The gateway's route table: GATEWAY_ROUTES, or the defaults (plus development's)."""
        if "gateway_routes" in self.model_fields_set or not self.is_development:
            return self.gateway_routes
        return self.gateway_routes + DEVELOPMENT_ROUTES

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
        """The PostgreSQL URL as libpq/asyncpg spell it (`postgresql://…`)."""
        url = self.database_url.get_secret_value() if self.database_url else DEV_DATABASE_URL
        for prefix in ("postgresql+asyncpg://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql://" + url[len(prefix):]
        return url

    @property
    def redis_dsn(self) -> str:
        return self.redis_url.get_secret_value() if self.redis_url else DEV_REDIS_URL

    @cached_property
    def secrets(self) -> Secrets:
        return build_secrets(self.secrets_backend, self.secrets_dir, self.secrets_cache_ttl_seconds)

    def problems(self, services: list[str] | None = None) -> list[str]:
        """Everything that makes this configuration unfit for its environment."""
        services = services if services is not None else list(SERVICE_PORTS)
        if self.is_development:
            return []
        needs = set().union(*(SERVICE_DEPENDENCIES.get(s, frozenset()) for s in services))
        found: list[str] = []
        if self.debug:
            found.append("PROG_DEBUG must be off outside development")
        if self.log_format != "json":
            found.append("LOG_FORMAT must be json outside development (logs are shipped as JSON)")
        if "postgres" in needs:
            found += _database_problems(self.database_url, self.env)
        if "redis" in needs:
            found += _redis_problems(self.redis_url, self.env)
        for name in ("APP_URL", "JWT_ISSUER"):
            value = getattr(self, name.lower())
            if not value.startswith("https://"):
                found.append(f"{name} must be an https:// URL outside development (got {value!r})")
            elif any(m in value.lower() for m in ("localhost", "127.0.0.1")):
                found.append(f"{name} must not point at localhost outside development")
        found += _forwarded_problems(self.trusted_proxies)
        if "billing" in services and self.env == "production" and not self.stripe_publishable_key.startswith("pk_live_"):
            found.append("STRIPE_PUBLISHABLE_KEY must be a live key (pk_live_…) in production")
        for service in services:
            for secret in SERVICE_SECRETS.get(service, ()):
                found += _secret_problems(self.secrets, secret)
        return found


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
        return ["FORWARDED_ALLOW_IPS is required outside development: the proxy addresses or CIDR ranges "
                "whose X-Forwarded-For is believed (the gateway's: the edge proxy's; the services': the gateway's)"]
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
            found.append(f"FORWARDED_ALLOW_IPS must not trust {entry}: every client could pick its own address")
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


def _secret_problems(secrets: Secrets, name: str) -> list[str]:
    value = secrets.get(name)
    if value is None:
        return [f"secret {name} is missing (set it in the environment or the secrets directory)"]
    text = value.get_secret_value().strip().lower()
    if len(text) < 16 or PLACEHOLDER.search(text):
        return [f"secret {name} looks like a placeholder or test value"]
    return []
