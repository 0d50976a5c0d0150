"""Who is asking, and which events they may see.

The caller's access token is verified here, against the user service's keys, even though
the gateway verified it already: a request that reaches this service some other way gets
no more than its token allows. A user sees events about themselves, a tenant member also
their tenant's, an operator or admin every event. Private events are seen by nobody.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import aiohttp
from fastapi import Request

from prognetwork.kit import tokens
from prognetwork.kit.auth import bearer_token, invalid_token
from prognetwork.kit.jwks import Jwks
from prognetwork.kit.revocation import Revocations

ALL_SEEING_ROLES = frozenset({"operator", "admin"})
# What every row served to a client must satisfy, whoever the client is.
NEVER_PRIVATE = "NOT private"


@dataclass(frozen=True, slots=True)
class Viewer:
    user_id: uuid.UUID
    role: str = "user"
    tenant_id: uuid.UUID | None = None

    @property
    def sees_all(self) -> bool:
        return self.role in ALL_SEEING_ROLES

    def sql(self) -> tuple[str, dict[str, object]]:
        """A WHERE condition on `events` (and its parameters) selecting what this viewer may see."""
        if self.sees_all:
            return NEVER_PRIVATE, {}
        if self.tenant_id is None:  # kept apart so the (user_id, seq) index serves it
            return f"{NEVER_PRIVATE} AND user_id = :viewer_user", {"viewer_user": self.user_id}
        return (
            f"{NEVER_PRIVATE} AND (user_id = :viewer_user OR tenant_id = :viewer_tenant)",
            {"viewer_user": self.user_id, "viewer_tenant": self.tenant_id},
        )


def viewer_from_claims(claims: dict[str, object]) -> Viewer:
    try:
        user_id = uuid.UUID(str(claims["sub"]))
        tenant = claims.get("tid")
        tenant_id = uuid.UUID(str(tenant)) if tenant else None
    except (KeyError, ValueError):
        raise invalid_token("token subject or tenant is not an id") from None
    return Viewer(user_id=user_id, role=str(claims.get("role") or "user"), tenant_id=tenant_id)


async def authenticate(request: Request) -> Viewer:
    """The verified caller of this request (FastAPI dependency); a signed-out session is refused."""
    token = bearer_token(request.headers.get("authorization"))
    jwks: Jwks = request.app.state.jwks
    session: aiohttp.ClientSession = request.app.state.http
    try:
        claims = await jwks.verify(token, session)
    except tokens.InvalidToken as exc:
        raise invalid_token(str(exc)) from None
    revocations: Revocations = request.app.state.revocations
    await revocations.ensure_active(claims, request.method)
    return viewer_from_claims(claims)
