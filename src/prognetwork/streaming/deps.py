"""The streaming service's request dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from prognetwork.kit.app import ReadOnlySession, WriteSession
from prognetwork.kit.auth import bearer_token, invalid_token
from prognetwork.kit.tokens import InvalidToken
from prognetwork.streaming.runtime import Runtime
from prognetwork.streaming.visibility import Viewer, viewer_from_claims

__all__ = ["Caller", "ReadOnlySession", "RuntimeDep", "WriteSession"]


# `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool, which costs two
# thread hand-offs per request for what is an attribute lookup.
async def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(runtime)]


async def authenticate(request: Request, runtime: RuntimeDep) -> Viewer:
    """The verified caller of this request, verified here too (a request that reaches this service
    some other way gets no more than its token allows); a signed-out session is refused."""
    token = bearer_token(request.headers.get("authorization"))
    try:
        claims = await runtime.jwks.verify(token, runtime.http)
    except InvalidToken as exc:
        raise invalid_token(str(exc)) from None
    await runtime.revocations.ensure_active(claims, request.method)
    return viewer_from_claims(claims)


Caller = Annotated[Viewer, Depends(authenticate)]
