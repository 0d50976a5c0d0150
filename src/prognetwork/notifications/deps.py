"""The notification service's request dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from prognetwork.kit.app import ReadOnlySession
from prognetwork.kit.auth import bearer_token, invalid_token
from prognetwork.kit.tokens import InvalidToken
from prognetwork.notifications.runtime import Runtime

__all__ = ["Caller", "ReadOnlySession", "RuntimeDep"]


# `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool, which costs two
# thread hand-offs per request for what is an attribute lookup.
async def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(runtime)]


async def authenticate(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """The verified claims of the request's access token, verified here too (a request that reaches
    this service some other way gets no more than its token allows); a signed-out session is refused."""
    token = bearer_token(request.headers.get("authorization"))
    try:
        claims = await runtime.jwks.verify(token, runtime.http)
    except InvalidToken as exc:
        raise invalid_token(str(exc)) from None
    await runtime.revocations.ensure_active(claims, request.method)
    return claims


Caller = Annotated[dict[str, Any], Depends(authenticate)]
