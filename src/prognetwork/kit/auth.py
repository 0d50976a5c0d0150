"""The bearer-token edge every verifier shares: parsing `Authorization` and the 401 problems.

Gateway, user service and streaming service answer a missing token and a bad token with the
same two problem kinds, so a client handles them once.
"""

from __future__ import annotations

from prognetwork.kit.problems import INVALID_TOKEN, UNAUTHENTICATED, Problem

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
