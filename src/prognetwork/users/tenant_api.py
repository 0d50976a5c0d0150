"""HTTP routes for tenants, their members and invitations: thin translations onto `Tenants`.

Every route needs a signed-in caller. A tenant the caller is not a member of answers 404
`tenant-not-found` (as one that does not exist), a role that falls short 403 `forbidden`.
Reads take a write session too: the tenant tables are read only inside a scoped transaction
(`kit.tenancy.scope`), which the autocommit read session cannot hold.
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, field_validator

from prognetwork.kit.audit import RequestOrigin
from prognetwork.kit.problems import AUTHENTICATED, problem_responses
from prognetwork.kit.validation import Email, Text, TokenText
from prognetwork.users import problems
from prognetwork.users.api import Strict
from prognetwork.users.deps import Acting, CallerId, TenantSvc, WriteSession
from prognetwork.users.models import TenantRole
from prognetwork.users.tenants import Invitation, Member

router = APIRouter(tags=["tenants"])
MEMBER_OF = (*AUTHENTICATED, problems.TENANT_NOT_FOUND)
MANAGING = (*MEMBER_OF, problems.FORBIDDEN)
# Unicode categories: control, format, line and paragraph separators, private use.
INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Co"})


class TenantIn(Strict):
    name: Text = Field(min_length=1, max_length=100)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # The name is quoted in invitation emails to addresses nobody has proved: no invisible
        # characters that reorder or hide text (bidi overrides, zero-width, line separators).
        for char in name:
            if unicodedata.category(char) in INVISIBLE:
                raise ValueError(f"must not contain the invisible or control character U+{ord(char):04X}")
        # Surrounding spaces are never meant; a name of spaces alone is no name.
        name = name.strip()
        if not name:
            raise ValueError("must contain something other than spaces")
        return name


class InvitationIn(Strict):
    email: Email = Field(max_length=320)
    role: TenantRole = "member"


class RoleIn(Strict):
    role: TenantRole


class AcceptIn(Strict):
    token: TokenText = Field(min_length=1, max_length=200)


class TenantOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    role: TenantRole = Field(description="The caller's role in this tenant")


class TenantDetailOut(TenantOut):
    plan: str
    seats: int = Field(description="How many members the plan allows")
    members: int = Field(description="How many members the tenant has")
    created_at: datetime


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    name: str
    role: TenantRole
    joined_at: datetime

    @classmethod
    def of(cls, member: Member) -> MemberOut:
        return cls.model_validate(member, from_attributes=True)


class InvitationOut(BaseModel):
    id: uuid.UUID
    email: str
    role: TenantRole
    expires_at: datetime
    created_at: datetime
    invited_by: uuid.UUID | None

    @classmethod
    def of(cls, invitation: Invitation) -> InvitationOut:
        return cls.model_validate(invitation, from_attributes=True)


class AcceptedOut(BaseModel):
    tenant_id: uuid.UUID
    role: TenantRole


@router.post(
    "/v1/tenants",
    status_code=201,
    response_model=TenantOut,
    responses=problem_responses(*AUTHENTICATED, problems.UNKNOWN_USER),
)
async def create_tenant(
    body: TenantIn, caller: CallerId, db: WriteSession, svc: TenantSvc, actor: Acting, origin: RequestOrigin
) -> TenantOut:
    created = await svc.create(db, caller, body.name, actor=actor, origin=origin)
    return TenantOut.model_validate(created, from_attributes=True)


@router.get("/v1/tenants", response_model=list[TenantOut], responses=problem_responses(*AUTHENTICATED))
async def my_tenants(caller: CallerId, db: WriteSession, svc: TenantSvc) -> list[TenantOut]:
    return [TenantOut.model_validate(t, from_attributes=True) for t in await svc.mine(db, caller)]


@router.get(
    "/v1/tenants/{tenant_id}", response_model=TenantDetailOut, responses=problem_responses(*MEMBER_OF)
)
async def get_tenant(
    tenant_id: uuid.UUID, caller: CallerId, db: WriteSession, svc: TenantSvc
) -> TenantDetailOut:
    return TenantDetailOut.model_validate(await svc.get(db, caller, tenant_id), from_attributes=True)


@router.get(
    "/v1/tenants/{tenant_id}/members", response_model=list[MemberOut], responses=problem_responses(*MEMBER_OF)
)
async def list_members(
    tenant_id: uuid.UUID, caller: CallerId, db: WriteSession, svc: TenantSvc
) -> list[MemberOut]:
    return [MemberOut.of(m) for m in await svc.members(db, caller, tenant_id)]


@router.patch(
    "/v1/tenants/{tenant_id}/members/{user_id}",
    response_model=MemberOut,
    responses=problem_responses(*MANAGING, problems.MEMBER_NOT_FOUND, problems.LAST_OWNER),
)
async def change_role(
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    body: RoleIn,
    caller: CallerId,
    db: WriteSession,
    svc: TenantSvc,
    actor: Acting,
    origin: RequestOrigin,
) -> MemberOut:
    changed = await svc.change_role(db, caller, tenant_id, user_id, body.role, actor=actor, origin=origin)
    return MemberOut.of(changed)


@router.delete(
    "/v1/tenants/{tenant_id}/members/{user_id}",
    status_code=204,
    responses=problem_responses(*MANAGING, problems.MEMBER_NOT_FOUND, problems.LAST_OWNER),
)
async def remove_member(
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    caller: CallerId,
    db: WriteSession,
    svc: TenantSvc,
    actor: Acting,
    origin: RequestOrigin,
) -> Response:
    await svc.remove(db, caller, tenant_id, user_id, actor=actor, origin=origin)
    return Response(status_code=204)


@router.post(
    "/v1/tenants/{tenant_id}/invitations",
    status_code=201,
    response_model=InvitationOut,
    responses=problem_responses(*MANAGING, problems.ALREADY_MEMBER, problems.TOO_MANY_INVITATIONS),
)
async def invite(
    tenant_id: uuid.UUID,
    body: InvitationIn,
    caller: CallerId,
    db: WriteSession,
    svc: TenantSvc,
    actor: Acting,
    origin: RequestOrigin,
) -> InvitationOut:
    invited = await svc.invite(db, caller, tenant_id, body.email, body.role, actor=actor, origin=origin)
    return InvitationOut.of(invited)


@router.get(
    "/v1/tenants/{tenant_id}/invitations",
    response_model=list[InvitationOut],
    responses=problem_responses(*MANAGING),
)
async def pending_invitations(
    tenant_id: uuid.UUID, caller: CallerId, db: WriteSession, svc: TenantSvc
) -> list[InvitationOut]:
    return [InvitationOut.of(i) for i in await svc.invitations(db, caller, tenant_id)]


@router.post(
    "/v1/invitations/accept",
    status_code=201,
    response_model=AcceptedOut,
    responses=problem_responses(*AUTHENTICATED, problems.INVITATION_NOT_FOUND, problems.SEAT_LIMIT_REACHED),
)
async def accept_invitation(
    body: AcceptIn, caller: CallerId, db: WriteSession, svc: TenantSvc, actor: Acting, origin: RequestOrigin
) -> AcceptedOut:
    accepted = await svc.accept(db, caller, body.token, actor=actor, origin=origin)
    return AcceptedOut.model_validate(accepted, from_attributes=True)
