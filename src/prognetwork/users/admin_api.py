"""The platform admin API of the user service (`/v1/admin/…`): accounts and tenants, for operators.

Authorised here, by the caller's platform role (the verified access token's `role`), whoever
calls: the admin console, a script through the gateway (`/api/v1/admin/…`), anything else.
`admin` and `operator` read; only `admin` changes anything, and every change is audited.
Any other role is answered 403 `forbidden`, naming the role required; no or a bad token, 401.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from prognetwork.kit import audit
from prognetwork.kit.auth import invalid_token, require_platform_role
from prognetwork.kit.problems import AUTHENTICATED, PLATFORM_ROLE_REQUIRED, problem_responses
from prognetwork.kit.validation import Text
from prognetwork.users import problems
from prognetwork.users.admin_queries import UserStatus
from prognetwork.users.admin_service import (
    ACTING_ROLES,
    READING_ROLES,
    PlatformAdmin,
    PlatformRole,
    TenantSummary,
    UserDetail,
    status_of,
)
from prognetwork.users.api import AcceptedOut, Strict
from prognetwork.users.deps import Caller, ReadOnlySession, WriteSession
from prognetwork.users.models import TenantRole, User

router = APIRouter(prefix="/v1/admin", tags=["admin"])
READING = (*AUTHENTICATED, PLATFORM_ROLE_REQUIRED)
ACTING = READING
PAGE_LIMIT = 100


# -- who is asking ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlatformCaller:
    """A signed-in caller whose platform role allows the route."""

    id: uuid.UUID
    email: str
    role: str

    @property
    def actor(self) -> audit.Actor:
        return audit.Actor(self.id, label=self.email, role=self.role)


def platform_caller(claims: dict[str, Any], allowed: tuple[str, ...]) -> PlatformCaller:
    role = require_platform_role(claims, allowed)
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except (KeyError, ValueError):
        raise invalid_token("its subject is not a user id") from None
    return PlatformCaller(user_id, str(claims.get("email") or user_id), role)


async def reader(claims: Caller) -> PlatformCaller:
    return platform_caller(claims, READING_ROLES)


async def acting_admin(claims: Caller) -> PlatformCaller:
    return platform_caller(claims, ACTING_ROLES)


Reader = Annotated[PlatformCaller, Depends(reader)]
Admin = Annotated[PlatformCaller, Depends(acting_admin)]


async def platform_admin(request: Request) -> PlatformAdmin:
    return PlatformAdmin(request.app.state.runtime.accounts)


AdminSvc = Annotated[PlatformAdmin, Depends(platform_admin)]


# -- what goes in and out -------------------------------------------------------------------------------


class AdminUserOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    role: str = Field(description="The platform role: user, operator or admin")
    status: UserStatus
    created_at: datetime
    email_verified_at: datetime | None

    @classmethod
    def of(cls, user: User) -> AdminUserOut:
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            role=user.role,
            status=status_of(user),
            created_at=user.created_at,
            email_verified_at=user.email_verified_at,
        )


class UsersPageOut(BaseModel):
    users: list[AdminUserOut]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last one")


class UserTenantOut(BaseModel):
    id: uuid.UUID
    name: str
    role: TenantRole


class SessionOut(BaseModel):
    session_id: str = Field(description="The session's id: its access tokens' `sid`")
    tenant_id: uuid.UUID | None = Field(description="The tenant the session is switched into, if any")


class EventOut(BaseModel):
    id: uuid.UUID
    seq: int
    type: str
    tenant_id: uuid.UUID | None
    payload: dict[str, Any]
    occurred_at: datetime


class AdminUserDetailOut(AdminUserOut):
    tenants: list[UserTenantOut]
    sessions: list[SessionOut]
    recent_events: list[EventOut] = Field(description="The latest 20, newest first; private events never")

    @classmethod
    def of_detail(cls, detail: UserDetail) -> AdminUserDetailOut:
        return cls(
            **AdminUserOut.of(detail.user).model_dump(),
            tenants=[UserTenantOut.model_validate(t, from_attributes=True) for t in detail.tenants],
            sessions=[SessionOut.model_validate(s, from_attributes=True) for s in detail.sessions],
            recent_events=[EventOut.model_validate(e, from_attributes=True) for e in detail.recent_events],
        )


class RoleIn(Strict):
    role: PlatformRole


class SessionsEndedOut(BaseModel):
    sessions_ended: int


class AdminTenantOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    plan: str
    seats: int = Field(description="How many members the plan allows")
    member_count: int = Field(description="How many members the tenant has")
    created_at: datetime

    @classmethod
    def of(cls, tenant: TenantSummary) -> AdminTenantOut:
        return cls(
            id=tenant.id,
            name=tenant.name,
            slug=tenant.slug,
            plan=tenant.plan,
            seats=tenant.seats,
            member_count=tenant.members,
            created_at=tenant.created_at,
        )


class TenantsPageOut(BaseModel):
    tenants: list[AdminTenantOut]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last one")


class AdminMemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    name: str
    role: TenantRole
    joined_at: datetime


class AdminTenantDetailOut(AdminTenantOut):
    members: list[AdminMemberOut] = Field(description="Every member, in the order they joined")


Search = Annotated[
    Text | None, Query(min_length=1, max_length=200, description="Part of the email or name, any case")
]
Limit = Annotated[int, Query(ge=1, le=PAGE_LIMIT)]


# -- accounts ---------------------------------------------------------------------------------------------


@router.get("/users", response_model=UsersPageOut, responses=problem_responses(*READING))
async def list_users(
    caller: Reader,
    db: ReadOnlySession,
    svc: AdminSvc,
    q: Search = None,
    status: Annotated[UserStatus | None, Query()] = None,
    limit: Limit = 50,
    after: Annotated[
        Text | None, Query(max_length=320, description="`next_after` of the page before")
    ] = None,
) -> UsersPageOut:
    """Accounts by email address, optionally only those whose email or name contains `q`."""
    page = await svc.users(db, q, status, limit, after)
    return UsersPageOut(users=[AdminUserOut.of(u) for u in page.items], next_after=page.next_after)


@router.get(
    "/users/{user_id}",
    response_model=AdminUserDetailOut,
    responses=problem_responses(*READING, problems.UNKNOWN_USER),
)
async def get_user(user_id: uuid.UUID, caller: Reader, db: WriteSession, svc: AdminSvc) -> AdminUserDetailOut:
    """An account, its tenants, its live sessions and its latest events. (A write session for a read:
    the tenants are read in a scope, which needs a transaction.)"""
    return AdminUserDetailOut.of_detail(await svc.user(db, user_id))


@router.post(
    "/users/{user_id}/disable",
    response_model=AdminUserOut,
    responses=problem_responses(*ACTING, problems.UNKNOWN_USER, problems.LAST_ADMIN),
)
async def disable_user(
    user_id: uuid.UUID, caller: Admin, request: Request, db: WriteSession, svc: AdminSvc
) -> AdminUserOut:
    """Refuse the account's logins and end every session it has, at once."""
    user = await svc.set_disabled(db, caller.actor, user_id, True, audit.origin_of(request))
    return AdminUserOut.of(user)


@router.post(
    "/users/{user_id}/enable",
    response_model=AdminUserOut,
    responses=problem_responses(*ACTING, problems.UNKNOWN_USER),
)
async def enable_user(
    user_id: uuid.UUID, caller: Admin, request: Request, db: WriteSession, svc: AdminSvc
) -> AdminUserOut:
    """Let a disabled account log in again."""
    user = await svc.set_disabled(db, caller.actor, user_id, False, audit.origin_of(request))
    return AdminUserOut.of(user)


@router.post(
    "/users/{user_id}/revoke-sessions",
    response_model=SessionsEndedOut,
    responses=problem_responses(*ACTING, problems.UNKNOWN_USER),
)
async def revoke_sessions(
    user_id: uuid.UUID, caller: Admin, request: Request, db: WriteSession, svc: AdminSvc
) -> SessionsEndedOut:
    """Sign the account out everywhere: its refresh and access tokens stop working now."""
    ended = await svc.revoke_sessions(db, caller.actor, user_id, audit.origin_of(request))
    return SessionsEndedOut(sessions_ended=ended)


@router.patch(
    "/users/{user_id}",
    response_model=AdminUserOut,
    responses=problem_responses(*ACTING, problems.UNKNOWN_USER, problems.LAST_ADMIN),
)
async def change_role(
    user_id: uuid.UUID, body: RoleIn, caller: Admin, request: Request, db: WriteSession, svc: AdminSvc
) -> AdminUserOut:
    """Change the account's platform role; it is signed out everywhere, so its next tokens carry it."""
    user = await svc.set_role(db, caller.actor, user_id, body.role, audit.origin_of(request))
    return AdminUserOut.of(user)


@router.post(
    "/users/{user_id}/resend-verification",
    status_code=202,
    response_model=AcceptedOut,
    responses=problem_responses(
        *ACTING, problems.UNKNOWN_USER, problems.ALREADY_VERIFIED, problems.TOO_MANY_EMAILS
    ),
)
async def resend_verification(
    user_id: uuid.UUID, caller: Admin, request: Request, db: WriteSession, svc: AdminSvc
) -> AcceptedOut:
    """Email an unverified account a new verification link (the one sent before stops working)."""
    user = await svc.resend_verification(db, caller.actor, user_id, audit.origin_of(request))
    return AcceptedOut(detail=f"A new verification link is on its way to {user.email}.")


# -- tenants ------------------------------------------------------------------------------------------------


@router.get("/tenants", response_model=TenantsPageOut, responses=problem_responses(*READING))
async def list_tenants(
    caller: Reader,
    db: WriteSession,
    svc: AdminSvc,
    q: Search = None,
    limit: Limit = 50,
    after: Annotated[Text | None, Query(max_length=64, description="`next_after` of the page before")] = None,
) -> TenantsPageOut:
    """Every tenant by slug, optionally only those whose name or slug contains `q`."""
    page = await svc.tenants(db, q, limit, after)
    return TenantsPageOut(tenants=[AdminTenantOut.of(t) for t in page.items], next_after=page.next_after)


@router.get(
    "/tenants/{tenant_id}",
    response_model=AdminTenantDetailOut,
    responses=problem_responses(*READING, problems.TENANT_NOT_FOUND),
)
async def get_tenant(
    tenant_id: uuid.UUID, caller: Reader, db: WriteSession, svc: AdminSvc
) -> AdminTenantDetailOut:
    """A tenant, its plan and seats, and its members with their roles."""
    detail = await svc.tenant(db, tenant_id)
    return AdminTenantDetailOut(
        **AdminTenantOut.of(detail.tenant).model_dump(),
        members=[AdminMemberOut.model_validate(m, from_attributes=True) for m in detail.members],
    )
