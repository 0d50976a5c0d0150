"""Verifying access tokens: the one place that decides what a valid token is.

The user service signs; the gateway and any service verify with the same rules: an
allow-list of one algorithm (EdDSA — so `alg: none` and HS256-with-a-public-key are refused
before any key is chosen), a known `kid`, and `iss`, `aud`, `exp`, `nbf` checked with a small leeway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt

ALGORITHM = "EdDSA"
LEEWAY_SECONDS = 10
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]


class InvalidToken(Exception):
    pass


class UnknownKey(InvalidToken):
    """Signed by a key we do not (yet) know: worth refreshing the key set once."""


def key_id(token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken("malformed token") from exc
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("token algorithm not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("token has no key id")
    return kid


def verify(token: str, key_for: Callable[[str], Any | None], issuer: str, audience: str) -> dict[str, Any]:
    """Claims of a valid token; `key_for(kid)` gives the public key or None."""
    kid = key_id(token)
    key = key_for(kid)
    if key is None:
        raise UnknownKey("token signed by an unknown key")
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token expired") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"token rejected: {exc}") from exc
