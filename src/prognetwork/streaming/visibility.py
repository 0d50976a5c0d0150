"""Who is asking, and which events they may see.

The caller's access token is verified (deps.authenticate) against the issuer's keys, even
though the gateway verified it already. A user sees events about themselves, a tenant member also
their tenant's, an operator or admin every event. Private events are seen by nobody: that rule is
not the viewer's to apply but every served query's (queries.NEVER_PRIVATE), so no viewer escapes it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, or_, true

from prognetwork.kit.auth import invalid_token
from prognetwork.kit.events import events

ALL_SEEING_ROLES = frozenset({"operator", "admin"})


@dataclass(frozen=True, slots=True)
class Viewer:
    user_id: uuid.UUID
    role: str = "user"
    tenant_id: uuid.UUID | None = None
    session_id: str = ""  # the token's `sid`: a stream ends when it is signed out
    expires_at: float = float("inf")  # the token's `exp`: a stream ends then too

    @property
    def sees_all(self) -> bool:
        return self.role in ALL_SEEING_ROLES

    def condition(self) -> ColumnElement[bool]:
        """The rows of `events` this viewer's scope covers (private ones are excluded by the query)."""
        if self.sees_all:
            return true()
        if self.tenant_id is None:  # kept apart so the (user_id, seq) index serves it
            return events.c.user_id == self.user_id
        return or_(events.c.user_id == self.user_id, events.c.tenant_id == self.tenant_id)


def viewer_from_claims(claims: dict[str, object]) -> Viewer:
    try:
        user_id = uuid.UUID(str(claims["sub"]))
        tenant = claims.get("tid")
        tenant_id = uuid.UUID(str(tenant)) if tenant else None
    except (KeyError, ValueError):
        raise invalid_token("token subject or tenant is not an id") from None
    # Verification accepted `exp` only if int() could read it: a JSON number or numeric string.
    expires = claims.get("exp") or "inf"
    if not isinstance(expires, int | float | str):
        raise invalid_token("token expiry is not a number")
    return Viewer(
        user_id=user_id,
        role=str(claims.get("role") or "user"),
        tenant_id=tenant_id,
        session_id=str(claims.get("sid") or ""),
        expires_at=float(expires),
    )
