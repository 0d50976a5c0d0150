"""The user service (port 3007): accounts, email verification, sessions and access tokens."""

from __future__ import annotations

from fastapi import FastAPI

from prognetwork.kit.app import Runtime, create_service_app
from prognetwork.kit.settings import Settings
from prognetwork.kit.throttle import Counter
from prognetwork.users import api
from prognetwork.users.keys import KeyRing
from prognetwork.users.service import Accounts
from prognetwork.users.sessions import SessionStore

SERVICE = "users"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    keys = KeyRing(settings)
    keys.jwks()  # fail at start, not at first login, if the signing keys are unusable

    async def wire(runtime: Runtime) -> None:
        assert runtime.redis is not None
        app.state.accounts = Accounts(
            settings, keys, SessionStore(runtime.redis, settings.refresh_token_ttl_seconds), Counter(runtime.redis)
        )

    app = create_service_app(SERVICE, settings, [api.router], startup=[wire])
    return app
