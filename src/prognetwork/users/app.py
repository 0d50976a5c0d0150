"""The user service's ASGI app: its routes, its runtime and the purge of expired registrations."""

from __future__ import annotations

import structlog
from fastapi import FastAPI

from prognetwork.kit import retry
from prognetwork.kit.app import Lifecycle, create_service_app
from prognetwork.users import SPEC, api
from prognetwork.users.keys import KeyRing
from prognetwork.users.runtime import Runtime, runtime_factory
from prognetwork.users.settings import UsersSettings

PURGE_EVERY_SECONDS = 3600.0
PURGE_RETRY_CAP_SECONDS = 300.0
log = structlog.get_logger("prognetwork.users")


async def purge_unverified(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Every replica runs it; the DELETE is idempotent, so overlapping runs only repeat a no-op.
    # After a failure (an outage) it tries again within minutes rather than at the next round.
    async def purge() -> None:
        async with runtime.database.sessions() as db:
            purged = await runtime.accounts.purge_unverified(db)
        if purged:
            log.info("expired registrations purged", count=purged)

    backoff = retry.Backoff("users.purge_unverified", base=1.0, cap=PURGE_RETRY_CAP_SECONDS)
    await retry.run_forever(backoff, purge, lifecycle.stop, idle=PURGE_EVERY_SECONDS)


def create_app(settings: UsersSettings | None = None) -> FastAPI:
    settings = settings or UsersSettings()
    keys = KeyRing(settings)
    keys.jwks()  # fail at start, not at first login, if the signing keys are unusable
    return create_service_app(
        SPEC,
        settings,
        [api.router],
        runtime=runtime_factory(keys),
        background=[purge_unverified],
    )
