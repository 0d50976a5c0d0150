"""The browser-facing defences: response headers, CSRF checks and the cookies' attributes.

- Every response carries a strict Content-Security-Policy (scripts, styles and connections from
  this origin only; no inline script or style anywhere in the console, so none is allowed), and
  headers that forbid framing, MIME sniffing and referrers to elsewhere.
- Every state-changing request (POST) must carry the session's CSRF token, as the form's hidden
  `csrf_token` field or, for htmx requests, the `X-CSRF-Token` header; the sign-in form, which
  has no session yet, carries the token of its own short-lived cookie (double submit). A request
  a browser marks as coming from another site (`Sec-Fetch-Site`) is refused whatever it carries.
- Cookies are HttpOnly, SameSite=Strict, Path=/ and, outside development, Secure.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prognetwork.admin.problems import CROSS_SITE_REFUSED, CSRF_REFUSED

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
BASE_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
]
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
LOGIN_COOKIE = "prog_admin_login"  # the sign-in form's CSRF token (no session exists yet)
LOGIN_COOKIE_SECONDS = 3600
# What a browser says of a request that another site started; `same-origin` and `none` (typed,
# bookmarked) are ours, a missing header is an older browser or a non-browser client.
FOREIGN_SITES = frozenset({"cross-site", "same-site"})


class SecurityHeaders:
    """Adds the headers above to every response (HSTS too when served over https)."""

    def __init__(self, app: ASGIApp, hsts: bool) -> None:
        self.app = app
        self.headers = [*BASE_HEADERS, HSTS] if hsts else BASE_HEADERS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(n, v) for n, v in self.headers if n not in present]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def check_origin(request: Request) -> None:
    if request.headers.get("sec-fetch-site", "").lower() in FOREIGN_SITES:
        raise CROSS_SITE_REFUSED(
            "This request came from another site; the console only accepts its own forms."
        )


def check_csrf(request: Request, form: Mapping[str, str], expected: str | None) -> None:
    """Refuse (403) a state-changing request without the expected CSRF token."""
    check_origin(request)
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CSRF_REFUSED(
            "This form has expired or did not come from this console. Reload the page and try again."
        )


def set_cookie(
    response: Response, name: str, value: str, *, secure: bool, max_age: int | None = None
) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="strict"
    )


def clear_cookie(response: Response, name: str, *, secure: bool) -> None:
    response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="strict")
