"""The bearer-token edge every verifier shares: parsing `Authorization` and the 401 problems.

Gateway, user service and streaming service answer a missing token and a bad token with the
same two problem kinds, so a client handles them once.
"""

from __future__ import annotations

from typing import Any

from prognetwork.kit.problems import INVALID_TOKEN, PLATFORM_ROLE_REQUIRED, UNAUTHENTICATED, Problem

BEARER_REALM = {"WWW-Authenticate": 'Bearer realm="prognetwork"'}
BEARER_INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def bearer_token(header: str | None) -> str:
    """The token in an `Authorization: Bearer <token>` header, or a 401 problem."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UNAUTHENTICATED("Send an access token: Authorization: Bearer <token>.", headers=BEARER_REALM)
    return token


def invalid_token(reason: str) -> Problem:
    return INVALID_TOKEN(f"The access token is not valid: {reason}.", headers=BEARER_INVALID)


# Platform roles (the token's `role` claim): operators read the admin API, admins also act.
PLATFORM_READERS = ("admin", "operator")
PLATFORM_ACTORS = ("admin",)


def require_platform_role(claims: dict[str, Any], allowed: tuple[str, ...]) -> str:
    """The caller's platform role when `allowed` includes it; otherwise a 403 naming what is needed.

    Each service checks this itself on its `/v1/admin` routes, whatever a console in front decided.
    """
    role = claims.get("role")
    if not isinstance(role, str) or role not in allowed:
        shown = role if isinstance(role, str) and role else "none"
        raise PLATFORM_ROLE_REQUIRED(
            f"This needs the platform role {' or '.join(allowed)}; yours is {shown}."
        )
    return role
