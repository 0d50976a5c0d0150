"""Access tokens as the user service issues them, and the key set that verifies them."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from prognetwork.users.keys import load_key

ISSUER = "http://localhost:8000"  # the development JWT_ISSUER / JWT_AUDIENCE
AUDIENCE = "prognetwork"


def mint(
    signing_key: str, sub: object, role: str = "user", tid: object | None = None, lifetime: int = 600,
    sid: str | None = None, tenant_role: str | None = None,
) -> str:
    """A valid access token, signed as the user service signs them."""
    key = load_key(signing_key)
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(sub), "iat": now, "nbf": now,
                              "exp": now + lifetime, "jti": uuid.uuid4().hex, "role": role, "sid": sid or uuid.uuid4().hex}
    if tid is not None:
        claims["tid"] = str(tid)
    if tenant_role is not None:
        claims["tenant_role"] = tenant_role
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwks_app(signing_key: str) -> Starlette:
    """An app publishing the key set (JWKS) of `signing_key`, as the user service does."""

    async def keys(request):
        return JSONResponse({"keys": [load_key(signing_key).jwk]})

    return Starlette(routes=[Route("/.well-known/jwks.json", keys)])
