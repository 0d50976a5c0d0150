"""HTTP routes of the user service: thin translations onto `Accounts`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from prognetwork.kit.audit import RequestOrigin, origin_of
from prognetwork.kit.db import Row
from prognetwork.kit.problems import AUTHENTICATED, problem_responses
from prognetwork.kit.validation import Email, Secret, Text, TokenText
from prognetwork.users import problems
from prognetwork.users.deps import Caller, Reads, Svc, WriteSession
from prognetwork.users.models import User
from prognetwork.users.service import Tokens

router = APIRouter()
NO_STORE = {"Cache-Control": "no-store"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterIn(Strict):
    email: Email = Field(max_length=320)
    # Long enough to matter, bounded so hashing cost stays bounded (OWASP ASVS 2.1).
    password: Secret = Field(min_length=10, max_length=128)
    name: Text = Field(min_length=1, max_length=200)


class VerifyEmailIn(Strict):
    token: TokenText = Field(min_length=1, max_length=200)
    # The password chosen at registration: the link alone proves the address, not the registrant.
    password: Secret = Field(min_length=1, max_length=128)


class LoginIn(Strict):
    email: Email = Field(max_length=320)
    password: Secret = Field(min_length=1, max_length=128)
    device_token: TokenText | None = Field(None, max_length=200, description="From this device's last login")


class RefreshIn(Strict):
    refresh_token: TokenText = Field(min_length=1, max_length=200)


class SwitchTenantIn(Strict):
    refresh_token: TokenText = Field(min_length=1, max_length=200)
    tenant_id: uuid.UUID


class PasswordResetIn(Strict):
    email: Email = Field(max_length=320)


class PasswordResetConfirmIn(Strict):
    token: TokenText = Field(min_length=1, max_length=200)
    password: Secret = Field(min_length=10, max_length=128)


class AcceptedOut(BaseModel):
    status: str = "accepted"
    detail: str


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
            id=user.id,
            email=user.email,
            name=user.name,
            role=user.role,
            email_verified=user.email_verified_at is not None,
            created_at=user.created_at,
        )

    @classmethod
    def of_row(cls, row: Row) -> UserOut:
        """From a row of the users table's columns (queries.PROFILE)."""
        return cls(
            id=row["id"],
            email=row["email"],
            name=row["name"],
            role=row["role"],
            email_verified=row["email_verified_at"] is not None,
            created_at=row["created_at"],
        )


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int

    @classmethod
    def of(cls, tokens: Tokens) -> TokensOut:
        return cls(**{f: getattr(tokens, f) for f in cls.model_fields})


class LoginOut(TokensOut):
    device_token: str = Field(
        description="Send it with this device's next login (see README, Sign-in protection)"
    )


REGISTRATION_ACCEPTED = "If this address can be registered, a verification link is on its way to it."
RESET_ACCEPTED = "If an account has this address, a password reset link is on its way to it."


@router.post(
    "/v1/auth/register",
    status_code=202,
    response_model=AcceptedOut,
    tags=["auth"],
    responses=problem_responses(),
)
async def register(body: RegisterIn, db: WriteSession, svc: Svc) -> AcceptedOut:
    # The same answer whether or not the address has an account: its owner learns by email.
    await svc.register(db, body.email, body.password, body.name)
    return AcceptedOut(detail=REGISTRATION_ACCEPTED)


@router.post(
    "/v1/auth/verify-email",
    response_model=UserOut,
    tags=["auth"],
    responses=problem_responses(problems.INVALID_VERIFICATION_LINK, problems.VERIFICATION_PASSWORD_MISMATCH),
)
async def verify_email(body: VerifyEmailIn, db: WriteSession, svc: Svc) -> UserOut:
    return UserOut.of(await svc.verify_email(db, body.token, body.password))


@router.post(
    "/v1/auth/login",
    response_model=LoginOut,
    tags=["auth"],
    responses=problem_responses(
        problems.INVALID_CREDENTIALS,
        problems.EMAIL_NOT_VERIFIED,
        problems.ACCOUNT_DISABLED,
        problems.TOO_MANY_ATTEMPTS,
    ),
)
async def login(body: LoginIn, request: Request, db: WriteSession, svc: Svc, response: Response) -> LoginOut:
    client = request.client.host if request.client else "unknown"
    response.headers.update(NO_STORE)
    tokens = await svc.login(
        db, body.email, body.password, client, body.device_token, origin=origin_of(request)
    )
    return LoginOut(**TokensOut.of(tokens).model_dump(), device_token=tokens.device_token or "")


@router.post(
    "/v1/auth/refresh",
    response_model=TokensOut,
    tags=["auth"],
    responses=problem_responses(problems.INVALID_REFRESH_TOKEN, problems.REFRESH_TOKEN_REUSED),
)
async def refresh(
    body: RefreshIn, db: WriteSession, svc: Svc, response: Response, origin: RequestOrigin
) -> TokensOut:
    response.headers.update(NO_STORE)
    return TokensOut.of(await svc.refresh(db, body.refresh_token, origin=origin))


@router.post(
    "/v1/auth/switch-tenant",
    response_model=TokensOut,
    tags=["auth", "tenants"],
    responses=problem_responses(
        problems.INVALID_REFRESH_TOKEN, problems.REFRESH_TOKEN_REUSED, problems.TENANT_NOT_FOUND
    ),
)
async def switch_tenant(
    body: SwitchTenantIn, db: WriteSession, svc: Svc, response: Response, origin: RequestOrigin
) -> TokensOut:
    """Like a refresh, but the new access token carries the tenant (`tid`) and the caller's role in
    it (`tenant_role`); later refreshes keep them while the caller is a member."""
    response.headers.update(NO_STORE)
    return TokensOut.of(await svc.switch_tenant(db, body.refresh_token, body.tenant_id, origin=origin))


@router.post("/v1/auth/logout", status_code=204, tags=["auth"], responses=problem_responses())
async def logout(body: RefreshIn, db: WriteSession, svc: Svc, origin: RequestOrigin) -> Response:
    await svc.logout(db, body.refresh_token, origin=origin)
    return Response(status_code=204)


@router.post(
    "/v1/auth/password-reset",
    status_code=202,
    response_model=AcceptedOut,
    tags=["auth"],
    responses=problem_responses(),
)
async def password_reset(
    body: PasswordResetIn, db: WriteSession, svc: Svc, origin: RequestOrigin
) -> AcceptedOut:
    await svc.request_password_reset(db, body.email, origin=origin)
    return AcceptedOut(detail=RESET_ACCEPTED)


@router.post(
    "/v1/auth/password-reset/confirm",
    status_code=204,
    tags=["auth"],
    responses=problem_responses(problems.INVALID_RESET_LINK),
)
async def password_reset_confirm(
    body: PasswordResetConfirmIn, db: WriteSession, svc: Svc, origin: RequestOrigin
) -> Response:
    await svc.reset_password(db, body.token, body.password, origin=origin)
    return Response(status_code=204)


@router.get(
    "/v1/users/me",
    response_model=UserOut,
    tags=["users"],
    responses=problem_responses(*AUTHENTICATED, problems.UNKNOWN_USER),
)
async def me(claims: Caller, database: Reads, svc: Svc) -> UserOut:
    return UserOut.of_row(await svc.me(database, uuid.UUID(claims["sub"])))


@router.get("/.well-known/jwks.json", tags=["auth"])
async def jwks(svc: Svc, response: Response) -> dict[str, Any]:
    # Short cache: verifiers refetch on an unknown kid anyway.
    response.headers["Cache-Control"] = "public, max-age=300"
    return svc.keys.jwks()
