"""The console's pages: thin routes that read the request, call the admin API as the signed-in
operator, and render a template.

Every POST checks the CSRF token (security.check_csrf) before anything else; the actions on a user
are admin-only (`Acting`), confirmed on a page of their own first (GET …/confirm/{action}), and
audited by the service that carries them out.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from prognetwork.admin import admin_api, health
from prognetwork.admin.deps import Acting, RuntimeDep, SignedIn
from prognetwork.admin.forms import read_form
from prognetwork.admin.gateway import ApiError
from prognetwork.admin.problems import NOT_FOUND
from prognetwork.admin.security import (
    LOGIN_COOKIE,
    LOGIN_COOKIE_SECONDS,
    check_csrf,
    clear_cookie,
    new_token,
    set_cookie,
)
from prognetwork.admin.sessions import COOKIE
from prognetwork.admin.signin import SessionEnded, SignInRefused
from prognetwork.admin.stream import RelayResponse
from prognetwork.kit.validation import Text, ascii_digits_int

router = APIRouter(include_in_schema=False)
T = TypeVar("T")

Search = Annotated[Text, Query(max_length=200)]
Cursor = Annotated[Text, Query(max_length=200)]
UserId = Annotated[uuid.UUID, Path()]
ROLES = ("user", "operator", "admin")
USER_STATUSES = ("active", "disabled", "unverified")
EMAIL_STATUSES = ("queued", "sent", "failed")
ACTIONS = {
    # action: (button, question, consequence, notice)
    "disable": (
        "Disable",
        "Disable {email}?",
        "They cannot sign in any more, and every session they have ends now.",
        "{email} is disabled; their sessions have ended.",
    ),
    "enable": ("Enable", "Enable {email}?", "They can sign in again.", "{email} is enabled."),
    "revoke-sessions": (
        "Revoke all sessions",
        "Revoke every session of {email}?",
        "They are signed out everywhere at once and must sign in again.",
        "Every session of {email} has been revoked.",
    ),
    "resend-verification": (
        "Resend verification email",
        "Send {email} a new verification email?",
        "A new link goes to their address; earlier links stop working.",
        "A new verification email is on its way to {email}.",
    ),
    "role": (
        "Change role",
        "Change the platform role of {email} to {role}?",
        "Admins may act in this console, operators may look, users cannot sign in here.",
        "{email} now has the role {role}.",
    ),
}


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only. Not `//…` (another host), and no
    backslash, space or control character anywhere: browsers drop some of them or read them as a
    slash, so a path with a tab after its first slash would lead to another host."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and len(target) < 500
        and not any(c == "\\" or ord(c) <= 0x20 or ord(c) == 0x7F for c in target)
    ):
        return target
    return "/users"


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- signing in and out -------------------------------------------------------------------------


@router.get("/")
async def home() -> Response:
    return see_other("/users")


@router.get("/login")
async def login_page(
    request: Request,
    runtime: RuntimeDep,
    next: Annotated[Text, Query(max_length=500)] = "",
    ended: Annotated[Text, Query(max_length=20)] = "",
) -> Response:
    if await runtime.sessions.load(request.cookies.get(COOKIE)) is not None:
        return see_other(safe_next(next))
    notices = {
        "signed-out": "You have signed out.",
        "expired": "Your session ended. Sign in again.",
    }
    return login_form(request, runtime, next, notice=notices.get(ended, ""))


def login_form(
    request: Request,
    runtime: RuntimeDep,
    next: str,
    *,
    error: str = "",
    notice: str = "",
    email: str = "",
    status: int = 200,
) -> Response:
    token = new_token()
    response = runtime.views.render(
        request,
        "login.html",
        {"csrf": token, "next": safe_next(next), "error": error, "notice": notice, "email": email},
        status=status,
    )
    set_cookie(
        response, LOGIN_COOKIE, token, secure=runtime.settings.secure_cookies, max_age=LOGIN_COOKIE_SECONDS
    )
    return response


@router.post("/login")
async def login(request: Request, runtime: RuntimeDep) -> Response:
    form = await read_form(request)
    check_csrf(request, form, request.cookies.get(LOGIN_COOKIE))
    email, password, next = form.get("email", "").strip(), form.get("password", ""), form.get("next", "")
    if not email or not password or len(email) > 320 or len(password) > 1024:
        return login_form(
            request, runtime, next, error="Enter your email and password.", email=email, status=400
        )
    try:
        session_id, _ = await runtime.auth.sign_in(email, password)
    except SignInRefused as exc:
        return login_form(request, runtime, next, error=exc.message, email=email, status=exc.status)
    response = see_other(safe_next(next))
    secure = runtime.settings.secure_cookies
    set_cookie(response, COOKIE, session_id, secure=secure)
    clear_cookie(response, LOGIN_COOKIE, secure=secure)
    return response


@router.post("/logout")
async def logout(request: Request, runtime: RuntimeDep, operator: SignedIn) -> Response:
    check_csrf(request, await read_form(request), operator.session.csrf)
    try:
        await operator.fresh_token()  # the gateway wants a live access token on the logout route
    except (SessionEnded, ApiError):
        pass  # ended already, or the platform is down: forgotten here all the same
    await runtime.auth.sign_out(operator.session)
    response = see_other("/login?ended=signed-out")
    clear_cookie(response, COOKIE, secure=runtime.settings.secure_cookies)
    return response


# -- users --------------------------------------------------------------------------------------


@router.get("/users")
async def users_page(
    request: Request,
    runtime: RuntimeDep,
    operator: SignedIn,
    q: Search = "",
    status: Search = "",
    after: Cursor = "",
) -> Response:
    status = status if status in USER_STATUSES else ""
    page = await admin_api.users(operator, q, status, after)
    return await render(
        request,
        runtime,
        operator,
        "users.html",
        {
            "q": q,
            "status": status,
            "after": after,
            "statuses": USER_STATUSES,
            "users": page.get("users", []),
            "next_after": page.get("next_after"),
        },
    )


@router.get("/users/{user_id}")
async def user_page(request: Request, runtime: RuntimeDep, operator: SignedIn, user_id: UserId) -> Response:
    found = await not_found_as_404(admin_api.user(operator, str(user_id)), "No such user.")
    return await render(request, runtime, operator, "user.html", {"user": found, "roles": ROLES})


@router.get("/users/{user_id}/confirm/{action}")
async def confirm_page(
    request: Request,
    runtime: RuntimeDep,
    operator: Acting,
    user_id: UserId,
    action: str,
    role: Annotated[Text, Query(max_length=20)] = "",
) -> Response:
    if action not in ACTIONS or (action == "role" and role not in ROLES):
        raise NOT_FOUND("No such action.")
    found = await not_found_as_404(admin_api.user(operator, str(user_id)), "No such user.")
    button, question, consequence, _ = ACTIONS[action]
    names = {"email": found.get("email", str(user_id)), "role": role}
    return await render(
        request,
        runtime,
        operator,
        "confirm.html",
        {
            "user": found,
            "action": action,
            "role": role,
            "button": button,
            "question": question.format(**names),
            "consequence": consequence,
        },
    )


@router.post("/users/{user_id}/{action}")
async def act(
    request: Request, runtime: RuntimeDep, operator: Acting, user_id: UserId, action: str
) -> Response:
    form = await read_form(request)
    check_csrf(request, form, operator.session.csrf)
    if action not in ACTIONS:
        raise NOT_FOUND("No such action.")
    role = form.get("role", "")
    target = f"/users/{user_id}"
    try:
        if action == "role":
            if role not in ROLES:
                raise NOT_FOUND("No such role.")
            await admin_api.set_role(operator, str(user_id), role)
        else:
            await admin_api.act_on_user(operator, str(user_id), action)
    except ApiError as exc:
        await runtime.sessions.notify(operator.session, f"Not done: {exc.message}")
        return see_other(target)
    email = form.get("email") or str(user_id)
    await runtime.sessions.notify(operator.session, ACTIONS[action][3].format(email=email, role=role))
    return see_other(target)


# -- tenants ------------------------------------------------------------------------------------


@router.get("/tenants")
async def tenants_page(
    request: Request, runtime: RuntimeDep, operator: SignedIn, q: Search = "", after: Cursor = ""
) -> Response:
    page = await admin_api.tenants(operator, q, after)
    return await render(
        request,
        runtime,
        operator,
        "tenants.html",
        {
            "q": q,
            "after": after,
            "tenants": page.get("tenants", []),
            "next_after": page.get("next_after"),
        },
    )


@router.get("/tenants/{tenant_id}")
async def tenant_page(
    request: Request, runtime: RuntimeDep, operator: SignedIn, tenant_id: Annotated[uuid.UUID, Path()]
) -> Response:
    found = await not_found_as_404(admin_api.tenant(operator, str(tenant_id)), "No such tenant.")
    subscription = await admin_api.subscription(operator, str(tenant_id))
    return await render(
        request, runtime, operator, "tenant.html", {"tenant": found, "subscription": subscription}
    )


# -- events -------------------------------------------------------------------------------------


@router.get("/events")
async def events_page(
    request: Request,
    runtime: RuntimeDep,
    operator: SignedIn,
    types: Annotated[Text, Query(max_length=2000)] = "",
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> Response:
    types = ",".join(t.strip() for t in types.split(",") if t.strip())
    if before is None:
        head = await admin_api.head(operator, runtime.known.head)
        runtime.known.head = head
        rows, more = await admin_api.events_before(operator, head + 1, types)
    else:
        head = None
        rows, more = await admin_api.events_before(operator, before, types)
    return await render(
        request,
        runtime,
        operator,
        "events.html",
        {
            "types": types,
            "events": rows,
            "head": head,
            "before": before,
            "older": rows[-1]["seq"] if rows and more else None,
        },
    )


@router.get("/events/stream")
async def events_stream(
    runtime: RuntimeDep,
    operator: SignedIn,
    types: Annotated[Text, Query(max_length=2000)] = "",
    last_event_id: Annotated[Text, Query(max_length=20)] = "",
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
) -> Response:
    resume = last_event_id_header if last_event_id_header is not None else last_event_id
    position = ascii_digits_int(resume) if resume else None
    token = await operator.fresh_token()
    params = {"types": types} if types else {}
    upstream = await runtime.gateway.open_stream(
        "/api/v1/events/stream", token, params, str(position) if position is not None else None
    )
    return RelayResponse(upstream, runtime.relays)


# -- emails, audit, health ----------------------------------------------------------------------


@router.get("/emails")
async def emails_page(
    request: Request,
    runtime: RuntimeDep,
    operator: SignedIn,
    recipient: Search = "",
    status: Search = "",
    before: Cursor = "",
) -> Response:
    status = status if status in EMAIL_STATUSES else ""
    page = await admin_api.emails(operator, recipient, status, before)
    return await render(
        request,
        runtime,
        operator,
        "emails.html",
        {
            "recipient": recipient,
            "status": status,
            "statuses": EMAIL_STATUSES,
            "before": before,
            "emails": page.get("emails", []),
            "next_before": page.get("next_before"),
        },
    )


@router.get("/audit")
async def audit_page(
    request: Request,
    runtime: RuntimeDep,
    operator: SignedIn,
    actor: Search = "",
    target: Search = "",
    action: Search = "",
    before: Cursor = "",
) -> Response:
    page = await admin_api.audit(operator, actor, target, action, before)
    return await render(
        request,
        runtime,
        operator,
        "audit.html",
        {
            "actor": actor,
            "target": target,
            "action": action,
            "before": before,
            "records": page.get("records", []),
            "next_before": page.get("next_before"),
        },
    )


@router.get("/audit/verification")
async def audit_verification_page(request: Request, runtime: RuntimeDep, operator: SignedIn) -> Response:
    """The chain's verification: it reads the whole log, so the Audit log page loads it after itself
    (htmx), and a verdict serves every page view for VERDICT_SECONDS."""
    try:
        verification, verify_error = await runtime.verdicts.get(lambda: admin_api.verify_audit(operator)), ""
    except ApiError as exc:
        verification, verify_error = None, exc.message
    return await render(
        request,
        runtime,
        operator,
        "audit_verification.html",
        {"verification": verification, "verify_error": verify_error},
    )


# Not /health: that path is every service's liveness probe, answered on the ops port only.
@router.get("/status")
async def health_page(request: Request, runtime: RuntimeDep, operator: SignedIn) -> Response:
    settings = runtime.settings
    found = await health.report(
        runtime.http, settings.health_urls, settings.prometheus_url, settings.admin_health_window_seconds
    )
    return await render(request, runtime, operator, "health.html", {"report": found})


# -- helpers ------------------------------------------------------------------------------------


async def render(
    request: Request, runtime: RuntimeDep, operator: SignedIn, template: str, context: dict[str, Any]
) -> Response:
    session = operator.session
    notices = await runtime.sessions.take_notices(session)
    return runtime.views.render(request, template, context, session=session, notices=notices)


async def not_found_as_404(call: Awaitable[T], detail: str) -> T:
    try:
        return await call
    except ApiError as exc:
        if exc.status == 404:
            raise NOT_FOUND(detail) from None
        raise
