"""The fake as one Starlette app: the v1 API, the hosted pages, the `/_fake` control endpoints, and
the webhook dispatcher running for the app's lifetime."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prognetwork.fakes.stripe import control, pages
from prognetwork.fakes.stripe.api import Api
from prognetwork.fakes.stripe.params import Obj, StripeError
from prognetwork.fakes.stripe.state import Store
from prognetwork.fakes.stripe.webhooks import Dispatcher

API_METHODS = ["GET", "POST", "DELETE"]


@dataclass(frozen=True)
class FakeConfig:
    api_key: str
    webhook_secret: str
    webhook_urls: list[str]
    public_url: str  # where the hosted pages are reached: checkout and portal URLs start with it


def log_line(fields: Obj) -> None:
    """One JSON line on stdout per API request and per webhook delivery attempt."""
    print(json.dumps({"at": round(time.time(), 3), **fields}), flush=True)


async def _stripe_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StripeError)
    return JSONResponse(exc.body(), exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"Unrecognized request URL ({request.method}: {request.url.path})."
    return JSONResponse(StripeError(exc.status_code, message).body(), exc.status_code)


def create_app(config: FakeConfig) -> Starlette:
    dispatcher = Dispatcher(config.webhook_urls, config.webhook_secret, log_line)
    store = Store(config.public_url.rstrip("/"), len(config.webhook_urls), dispatcher.publish)
    api = Api(store, config.api_key, log_line)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()

    return Starlette(
        routes=[
            *control.routes(store, dispatcher, api),
            *pages.routes(store),
            Route("/v1/{path:path}", api.handle, methods=API_METHODS),
        ],
        exception_handlers={StripeError: _stripe_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
