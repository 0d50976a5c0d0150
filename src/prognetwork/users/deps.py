"""The user service's request dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Request

from prognetwork.kit import audit
from prognetwork.kit.app import ReadOnlySession, Reads, WriteSession
from prognetwork.kit.auth import bearer_token, invalid_token
from prognetwork.users.keys import InvalidToken
from prognetwork.users.runtime import Runtime
from prognetwork.users.service import Accounts
from prognetwork.users.tenants import Tenants

__all__ = ["Acting", "Caller", "CallerId", "ReadOnlySession", "Reads", "Svc", "TenantSvc", "WriteSession"]


# `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool, which costs two
# thread hand-offs per request for what is an attribute lookup.
async def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def accounts(request: Request) -> Accounts:
    return request.app.state.runtime.accounts


Svc = Annotated[Accounts, Depends(accounts)]


async def tenants(request: Request) -> Tenants:
    return request.app.state.runtime.tenants


TenantSvc = Annotated[Tenants, Depends(tenants)]


async def caller_claims(request: Request, svc: Svc) -> dict[str, Any]:
    """The verified claims of the request's access token, whose session is still signed in."""
    token = bearer_token(request.headers.get("authorization"))
    try:
        claims = svc.keys.verify(token)
    except InvalidToken as exc:
        raise invalid_token(str(exc)) from None
    await svc.revocations.ensure_active(claims, request.method)
    return claims


Caller = Annotated[dict[str, Any], Depends(caller_claims)]


async def caller_id(claims: Caller) -> uuid.UUID:
    """The id of the signed-in caller (the verified token's subject)."""
    try:
        return uuid.UUID(claims["sub"])
    except (KeyError, TypeError, ValueError):
        raise invalid_token("its subject is not a user id") from None


CallerId = Annotated[uuid.UUID, Depends(caller_id)]


async def acting(claims: Caller) -> audit.Actor:
    """The signed-in caller as the actor of the audit records its request writes."""
    return audit.actor_of(claims)


Acting = Annotated[audit.Actor, Depends(acting)]
