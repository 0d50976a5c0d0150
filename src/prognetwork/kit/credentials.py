"""PostgreSQL and Redis credentials that survive a rotation, without a restart.

With `SECRETS_BACKEND=file` or `aws`, DATABASE_URL and REDIS_URL are secrets like any other:
each new connection reads the current URL through the secrets provider (cached for
`SECRETS_CACHE_TTL_SECONDS`), and when the server rejects the password it held, the URL is read
again at once, bypassing the cache, and the connection is tried once more with it. Connections
already open stay authenticated (neither server drops them when a password changes); those
opened later use the new password. So a rotation is: give the role/user its new password and
put it in the secret store, in either order; requests succeed again as soon as both are done.

With `SECRETS_BACKEND=env` none of this applies: the URLs are read once from the environment,
as they always were.

Only the credentials (user, password) of a Redis URL are re-read: its host and database are
the ones the client was created with. A PostgreSQL URL is re-read whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import structlog
from redis.asyncio.connection import AbstractConnection
from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError

from prognetwork.kit.db import COMMAND_TIMEOUT, CONNECT_TIMEOUT
from prognetwork.kit.secrets import Secrets
from prognetwork.kit.settings import DEV_DATABASE_URL, DEV_REDIS_URL, Settings, libpq_url

log = structlog.get_logger("prognetwork.credentials")

# What asyncpg raises when PostgreSQL refuses the login (28000: wrong password, unknown role).
REJECTED_LOGIN = asyncpg.InvalidAuthorizationSpecificationError

Connector = Callable[[], Awaitable[asyncpg.Connection]]


class RotatingSecret:
    """One secret a connection authenticates with: read through the provider's cache, and read
    again at once when a server refused it."""

    def __init__(self, secrets: Secrets, name: str, default: str | None = None) -> None:
        self.secrets = secrets
        self.name = name
        self.default = default  # when no source has it (development's servers)

    async def current(self) -> str:
        return await asyncio.to_thread(self._value, self.secrets.get)

    async def reread(self, refused: str) -> str | None:
        """The value after `refused` was rejected: a new one, or None when the store still holds
        `refused` (the rejection stands)."""
        value = await asyncio.to_thread(self._value, self.secrets.refresh)
        return None if value == refused else value

    def _value(self, read: Callable[[str], Any]) -> str:
        value = read(self.name)
        if value is not None:
            return str(value.get_secret_value())
        if self.default is None:
            raise RuntimeError(f"secret {self.name} is not set (looked in {self.secrets.where()})")
        return self.default


def rotates(settings: Settings) -> bool:
    """Whether connection URLs come from a secret store that may change them while we run."""
    return settings.secrets_backend != "env"


def postgres_connector(
    settings: Settings, timeout: float = CONNECT_TIMEOUT, command_timeout: float = COMMAND_TIMEOUT
) -> Connector | None:
    """An asyncpg connect for SQLAlchemy's `async_creator`, reading DATABASE_URL per connection;
    None with SECRETS_BACKEND=env (the engine connects to the URL it was given)."""
    if not rotates(settings):
        return None
    url = RotatingSecret(settings.secrets, "DATABASE_URL", DEV_DATABASE_URL)

    async def connect() -> asyncpg.Connection:
        held = await url.current()
        try:
            return await asyncpg.connect(libpq_url(held), timeout=timeout, command_timeout=command_timeout)
        except REJECTED_LOGIN:
            rotated = await url.reread(refused=held)
            if rotated is None:
                raise
            log.info("database_credentials_reread", name=url.name)
            return await asyncpg.connect(libpq_url(rotated), timeout=timeout, command_timeout=command_timeout)

    return connect


class RedisCredentials(CredentialProvider):
    """The user and password of the current REDIS_URL, for each new Redis connection."""

    def __init__(self, url: RotatingSecret) -> None:
        self.url = url
        self.last: str | None = None  # the URL the last credentials came from

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        raise NotImplementedError("the asyncio client calls get_credentials_async")

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        self.last = await self.url.current()
        return redis_credentials(self.last)

    async def reread(self) -> bool:
        """After a refusal: whether the store now holds other credentials."""
        if self.last is None:
            return False
        rotated = await self.url.reread(refused=self.last)
        if rotated is None or redis_credentials(rotated) == redis_credentials(self.last):
            return False
        self.last = rotated
        return True


def redis_credentials(url: str) -> tuple[str] | tuple[str, str]:
    """AUTH's arguments for `url`: (user, password), (password,), or none (an empty tuple)."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else ""
    if not password:
        # redis-py annotates credentials as one or two strings, yet sends no AUTH for an empty
        # tuple: what a URL without a password means.
        return ()  # type: ignore[return-value]
    if parts.username:
        return unquote(parts.username), password
    return (password,)


def without_credentials(url: str) -> str:
    """`url` without user and password (the credential provider supplies them)."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redis_auth(settings: Settings) -> tuple[str, dict[str, Any] | None]:
    """The URL to create the Redis client with, and the connection options that authenticate
    each new connection with the current REDIS_URL (None with SECRETS_BACKEND=env)."""
    url = settings.redis_dsn
    if not rotates(settings):
        return url, None
    credentials = RedisCredentials(RotatingSecret(settings.secrets, "REDIS_URL", DEV_REDIS_URL))

    async def authenticate(connection: AbstractConnection) -> None:
        try:
            await connection.on_connect()
        except AuthenticationError:
            if not await credentials.reread():
                raise
            log.info("redis_credentials_reread", name="REDIS_URL")
            # A new session with what was just read (this function runs again, once more at most:
            # a second refusal of the same credentials is final).
            await connection.disconnect()
            await connection.connect_check_health(check_health=True, retry_socket_connect=False)

    return without_credentials(url), {"credential_provider": credentials, "redis_connect_func": authenticate}


def listener_dsn(settings: Settings) -> str | Connector:
    """What a LISTEN connection (kit.events) connects with: the URL, or with a rotating secrets
    backend the same per-connection read (and re-read on a refused login) as the engine's."""
    return postgres_connector(settings) or settings.database_dsn
