"""The billing service's request dependencies, as `Annotated` aliases the routes declare.

`Caller` is any signed-in user (token verified here too, signed-out sessions refused); `Member` a
caller acting inside a tenant (the token's `tid`, set by switching tenant); `Manager` a member
whose tenant role may spend the tenant's money (owner or admin).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from prognetwork.billing.problems import FORBIDDEN, TENANT_REQUIRED
from prognetwork.billing.runtime import Runtime
from prognetwork.billing.service import Billing, TenantMember
from prognetwork.billing.webhooks import Webhooks
from prognetwork.kit import audit
from prognetwork.kit.app import WriteSession
from prognetwork.kit.auth import bearer_token, invalid_token
from prognetwork.kit.tokens import InvalidToken

__all__ = ["Caller", "Manager", "Member", "RequestId", "RuntimeDep", "Svc", "WebhooksDep", "WriteSession"]

MANAGING_ROLES = ("owner", "admin")


# `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool, which costs two
# thread hand-offs per request for what is an attribute lookup.
async def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(runtime)]


async def billing(request: Request) -> Billing:
    return request.app.state.runtime.billing


async def webhooks(request: Request) -> Webhooks:
    return request.app.state.runtime.webhooks


Svc = Annotated[Billing, Depends(billing)]
WebhooksDep = Annotated[Webhooks, Depends(webhooks)]


async def request_id(request: Request) -> str:
    """The request's id (the kit's middleware takes the client's X-Request-ID or makes one)."""
    return str(request.scope.get("prog.request_id") or uuid.uuid4().hex)


RequestId = Annotated[str, Depends(request_id)]


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: uuid.UUID
    tenant_id: uuid.UUID | None
    tenant_role: str | None
    actor: audit.Actor | None = None  # as audit records name the caller (email, platform role)


async def authenticate(request: Request, runtime: RuntimeDep) -> Claims:
    """The verified caller: the token is checked here too (a request that reaches this service
    some other way gets no more than its token allows), and a signed-out session is refused."""
    token = bearer_token(request.headers.get("authorization"))
    try:
        claims = await runtime.jwks.verify(token, runtime.http)
    except InvalidToken as exc:
        raise invalid_token(str(exc)) from None
    await runtime.revocations.ensure_active(claims, request.method)
    try:
        user_id = uuid.UUID(str(claims["sub"]))
        tenant = claims.get("tid")
        tenant_id = uuid.UUID(str(tenant)) if tenant else None
    except (KeyError, ValueError):
        raise invalid_token("token subject or tenant is not an id") from None
    role = claims.get("tenant_role")
    return Claims(user_id, tenant_id, role if isinstance(role, str) else None, audit.actor_of(claims))


Caller = Annotated[Claims, Depends(authenticate)]


async def member(caller: Caller) -> TenantMember:
    if caller.tenant_id is None:
        raise TENANT_REQUIRED(
            "Billing belongs to a tenant: switch into one first (POST /api/v1/auth/switch-tenant) "
            "and use the access token it returns."
        )
    return TenantMember(caller.user_id, caller.tenant_id, caller.tenant_role or "member", caller.actor)


Member = Annotated[TenantMember, Depends(member)]


async def manager(member: Member) -> TenantMember:
    if member.tenant_role not in MANAGING_ROLES:
        raise FORBIDDEN(
            f"Managing the tenant's billing needs the tenant role owner or admin; yours is {member.tenant_role}."
        )
    return member


Manager = Annotated[TenantMember, Depends(manager)]
