"""The user service (port 3007): accounts, email verification, sessions and access tokens."""

from __future__ import annotations

import structlog
from fastapi import FastAPI

from prognetwork.kit.app import Runtime, create_service_app
from prognetwork.kit.events import wait_for
from prognetwork.kit.revocation import Revocations
from prognetwork.kit.settings import Settings
from prognetwork.kit.throttle import Counter
from prognetwork.users import api
from prognetwork.users.keys import KeyRing
from prognetwork.users.service import Accounts
from prognetwork.users.sessions import SessionStore

SERVICE = "users"
PURGE_EVERY_SECONDS = 3600.0
log = structlog.get_logger("prognetwork.users")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    keys = KeyRing(settings)
    keys.jwks()  # fail at start, not at first login, if the signing keys are unusable

    async def wire(runtime: Runtime) -> None:
        assert runtime.redis is not None
        app.state.accounts = Accounts(
            settings, keys, SessionStore(runtime.redis, settings.refresh_token_ttl_seconds), Counter(runtime.redis),
            Revocations(runtime.redis),
        )

    async def purge_unverified(runtime: Runtime) -> None:
        # Every replica runs it; the DELETE is idempotent, so overlapping runs only repeat a no-op.
        assert runtime.sessions is not None
        while not runtime.stop.is_set():
            try:
                async with runtime.sessions() as db:
                    purged = await app.state.accounts.purge_unverified(db)
                if purged:
                    log.info("expired registrations purged", count=purged)
            except Exception as exc:  # an outage: try again next round
                log.warning("purging expired registrations failed", error=type(exc).__name__)
            await wait_for(runtime.stop, PURGE_EVERY_SECONDS)

    app = create_service_app(SERVICE, settings, [api.router], startup=[wire], background=[purge_unverified])
    return app
