"""What a running user service holds, built once at start-up and closed by the same lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prognetwork.kit.app import Connections, RuntimeFactory
from prognetwork.kit.cache import TextRedis
from prognetwork.kit.db import Database
from prognetwork.kit.revocation import Revocations
from prognetwork.kit.throttle import Counter
from prognetwork.users.keys import KeyRing
from prognetwork.users.service import Accounts
from prognetwork.users.sessions import SessionStore
from prognetwork.users.settings import UsersSettings
from prognetwork.users.tenants import Tenants


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: UsersSettings
    database: Database
    accounts: Accounts
    tenants: Tenants


def build_accounts(settings: UsersSettings, redis: TextRedis, keys: KeyRing) -> Accounts:
    return Accounts(
        settings,
        keys,
        SessionStore(redis, settings.refresh_token_ttl_seconds),
        Counter(redis),
        Revocations(redis),
    )


def runtime_factory(keys: KeyRing) -> RuntimeFactory[UsersSettings, Runtime]:
    @asynccontextmanager
    async def open_runtime(settings: UsersSettings, connections: Connections) -> AsyncIterator[Runtime]:
        # Nothing of its own to open or close: the kit owns PostgreSQL and Redis.
        accounts = build_accounts(settings, connections.redis, keys)
        yield Runtime(settings, connections.database, accounts, Tenants(settings, accounts))

    return open_runtime
