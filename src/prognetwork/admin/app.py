"""The admin console's ASGI app: its pages, its static files, its defences and its background jobs.

The API port serves the pages and `/static/…`; the ops port what every service's does (kit). The
console answers people, so every error is a page, with the status a problem+json answer would
carry: a missing session sends the browser to the sign-in page (an htmx request is told to go
there with `HX-Redirect`, the event stream gets a plain 401).
"""

from __future__ import annotations

from urllib.parse import quote

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from prognetwork.admin import SPEC, pages
from prognetwork.admin.gateway import ApiError
from prognetwork.admin.runtime import Runtime, open_runtime
from prognetwork.admin.security import SecurityHeaders, clear_cookie
from prognetwork.admin.sessions import COOKIE
from prognetwork.admin.settings import AdminSettings
from prognetwork.admin.signin import SessionEnded, SignInRequired
from prognetwork.admin.views import STATIC
from prognetwork.kit.app import Check, Lifecycle, create_service_app
from prognetwork.kit.problems import OUTAGES, Problem
from prognetwork.kit.retry import wait_for

log = structlog.get_logger("prognetwork.admin")
DRAIN_CHECK_SECONDS = 0.1
STREAM_PATH = "/events/stream"


async def keep_keys_fresh(runtime: Runtime, lifecycle: Lifecycle) -> None:
    await runtime.jwks.keep_fresh(runtime.http, runtime.settings.jwks_refresh_seconds, lifecycle.stop)


async def end_relays_on_shutdown(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Relayed event streams never finish by themselves, and the server waits for open responses
    # before it stops: once the drain delay after SIGTERM has passed, end them (browsers reconnect
    # to another replica with Last-Event-ID).
    while not lifecycle.draining and not lifecycle.stop.is_set():
        await wait_for(lifecycle.stop, DRAIN_CHECK_SECONDS)
    if not lifecycle.stop.is_set():
        await wait_for(lifecycle.stop, runtime.settings.drain_seconds)
    runtime.relays.close_all()


def readiness(runtime: Runtime) -> dict[str, Check]:
    async def keys_loaded() -> str | None:
        return None if runtime.jwks.loaded else "the token issuer's keys are not loaded yet"

    return {"jwks": keys_loaded}


def create_app(settings: AdminSettings | None = None) -> FastAPI:
    settings = settings or AdminSettings()
    app = create_service_app(
        SPEC,
        settings,
        [pages.router],
        runtime=open_runtime,
        checks=readiness,
        background=[keep_keys_fresh, end_relays_on_shutdown],
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders, hsts=not settings.is_development)
    app.add_middleware(ClientAddress)
    install_error_pages(app)
    return app


class ClientAddress:
    """Binds the browser's address for the gateway calls a request makes (gateway.headers_for)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not client:
            await self.app(scope, receive, send)
            return
        with structlog.contextvars.bound_contextvars(client_ip=client[0]):
            await self.app(scope, receive, send)


def install_error_pages(app: FastAPI) -> None:
    async def page(
        request: Request, status: int, title: str, detail: str, *, signed_in: bool = True
    ) -> Response:
        runtime: Runtime = request.app.state.runtime
        session = await runtime.sessions.load(request.cookies.get(COOKIE)) if signed_in else None
        context = {"status": status, "title": title, "detail": detail}
        return runtime.views.render(request, "error.html", context, session=session, status=status)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        return to_sign_in(request, "")

    @app.exception_handler(SessionEnded)
    async def _ended(request: Request, exc: SessionEnded) -> Response:
        log.info("session ended", reason=str(exc))
        response = to_sign_in(request, "expired")
        clear_cookie(response, COOKIE, secure=request.app.state.runtime.settings.secure_cookies)
        return response

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return await page(request, exc.status, exc.title or "Refused", exc.detail)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> Response:
        status = 502 if exc.unavailable else exc.status
        title = "Not available" if exc.unavailable else "The platform refused this"
        return await page(request, status, title, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return await page(request, 404, "Not found", f"There is no page at {request.url.path}.")
        if exc.status_code == 405:
            return await page(request, 405, "Not allowed", f"{request.method} is not allowed here.")
        return await page(request, exc.status_code, "Refused", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(str(e.get("loc", ("?",))[-1]) for e in exc.errors()[:5])
        return await page(request, 400, "Invalid request", f"These values are not valid here: {fields}.")

    async def _outage(request: Request, exc: Exception) -> Response:
        log.warning("dependency unavailable", path=request.url.path, error=type(exc).__name__)
        return await page(
            request,
            503,
            "Unavailable",
            "The console's session store is unavailable. Try again shortly.",
            signed_in=False,
        )

    for outage in OUTAGES:
        app.add_exception_handler(outage, _outage)


def to_sign_in(request: Request, reason: str) -> Response:
    if request.url.path == STREAM_PATH:
        return PlainTextResponse("Sign in first.", status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = "/login?next=" + quote(target, safe="/")
    if reason:
        url += f"&ended={reason}"
    if request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)
