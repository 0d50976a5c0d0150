"""HTTP routes of the user service: thin translations onto `Accounts`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit.app import db_reader, db_session
from prognetwork.kit.problems import Problem
from prognetwork.users.keys import InvalidToken
from prognetwork.users.models import User
from prognetwork.users.service import Accounts, Tokens

router = APIRouter()
Db = Annotated[AsyncSession, Depends(db_session)]
Reader = Annotated[AsyncSession, Depends(db_reader)]
NO_STORE = {"Cache-Control": "no-store"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterIn(Strict):
    email: EmailStr = Field(max_length=320)
    # Long enough to matter, bounded so hashing cost stays bounded (OWASP ASVS 2.1).
    password: str = Field(min_length=10, max_length=128)
    name: str = Field(min_length=1, max_length=200)


class TokenIn(Strict):
    token: str = Field(min_length=1, max_length=200)


class LoginIn(Strict):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=128)


class RefreshIn(Strict):
    refresh_token: str = Field(min_length=1, max_length=200)


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    role: str
    email_verified: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id, email=user.email, name=user.name, role=user.role,
            email_verified=user.email_verified_at is not None, created_at=user.created_at,
        )


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int

    @classmethod
    def of(cls, tokens: Tokens) -> TokensOut:
        return cls(**{f: getattr(tokens, f) for f in cls.model_fields})


# Dependencies are `async def` on purpose: FastAPI runs plain `def` ones in a thread pool,
# which costs two thread hand-offs per request for what is a dictionary lookup.
async def accounts(request: Request) -> Accounts:
    return request.app.state.accounts


Svc = Annotated[Accounts, Depends(accounts)]


async def bearer_claims(request: Request, svc: Svc) -> dict[str, Any]:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(
            401, "Send an access token: Authorization: Bearer <token>.", kind="unauthenticated",
            headers={"WWW-Authenticate": 'Bearer realm="prognetwork"'},
        )
    try:
        return svc.keys.verify(token.strip())
    except InvalidToken as exc:
        raise Problem(
            401, f"The access token is not valid: {exc}.", kind="invalid-token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None


Claims = Annotated[dict[str, Any], Depends(bearer_claims)]


@router.post("/v1/auth/register", status_code=201, response_model=UserOut, tags=["auth"])
async def register(body: RegisterIn, db: Db, svc: Svc, response: Response) -> UserOut:
    user = await svc.register(db, body.email, body.password, body.name)
    response.headers["Location"] = "/v1/users/me"
    return UserOut.of(user)


@router.post("/v1/auth/verify-email", response_model=UserOut, tags=["auth"])
async def verify_email(body: TokenIn, db: Db, svc: Svc) -> UserOut:
    return UserOut.of(await svc.verify_email(db, body.token))


@router.post("/v1/auth/login", response_model=TokensOut, tags=["auth"])
async def login(body: LoginIn, request: Request, db: Db, svc: Svc, response: Response) -> TokensOut:
    client = request.client.host if request.client else "unknown"
    response.headers.update(NO_STORE)
    return TokensOut.of(await svc.login(db, body.email, body.password, client))


@router.post("/v1/auth/refresh", response_model=TokensOut, tags=["auth"])
async def refresh(body: RefreshIn, db: Db, svc: Svc, response: Response) -> TokensOut:
    response.headers.update(NO_STORE)
    return TokensOut.of(await svc.refresh(db, body.refresh_token))


@router.post("/v1/auth/logout", status_code=204, tags=["auth"])
async def logout(body: RefreshIn, db: Db, svc: Svc) -> Response:
    await svc.logout(db, body.refresh_token)
    return Response(status_code=204)


@router.get("/v1/users/me", response_model=UserOut, tags=["users"])
async def me(claims: Claims, db: Reader, svc: Svc) -> UserOut:
    return UserOut.of(await svc.me(db, uuid.UUID(claims["sub"])))


@router.get("/.well-known/jwks.json", tags=["auth"])
async def jwks(svc: Svc, response: Response) -> dict[str, Any]:
    # Short cache: verifiers refetch on an unknown kid anyway.
    response.headers["Cache-Control"] = "public, max-age=300"
    return svc.keys.jwks()
