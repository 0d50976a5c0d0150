"""The audit log over HTTP, for platform operators and admins (the console reads it this way).

`GET /v1/admin/audit` pages through records newest first; `GET /v1/admin/audit/verify`
recomputes the whole chain and checks the signed checkpoints, as `prog audit verify` does.
Platform roles `admin` and `operator` only (the verified token's `role`): any other is 403
`forbidden`, no or a bad token 401. Reading is not itself audited: the console polls it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from prognetwork.kit import audit
from prognetwork.kit.auth import PLATFORM_READERS, require_platform_role
from prognetwork.kit.problems import AUTHENTICATED, PLATFORM_ROLE_REQUIRED, problem_responses
from prognetwork.kit.validation import Text
from prognetwork.users.deps import Caller, ReadOnlySession, Svc, WriteSession

router = APIRouter(prefix="/v1/admin/audit", tags=["audit"])
READERS = (*AUTHENTICATED, PLATFORM_ROLE_REQUIRED)


async def auditor(claims: Caller) -> audit.Actor:
    """The caller, if their platform role may read the audit log."""
    require_platform_role(claims, PLATFORM_READERS)
    return audit.actor_of(claims)


Auditor = Annotated[audit.Actor, Depends(auditor)]


class AuditRecordOut(BaseModel):
    seq: int
    occurred_at: datetime
    actor_id: uuid.UUID | None
    actor_label: str = Field(description='An email, "system", "anonymous" or "cli:<os user>"')
    actor_role: str | None
    action: str
    target_type: str
    target_id: str | None
    tenant_id: uuid.UUID | None
    client_ip: str | None
    request_id: str | None
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPageOut(BaseModel):
    records: list[AuditRecordOut]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null at the end")


class CheckpointOut(BaseModel):
    seq: int
    hash: str
    signed_at: datetime
    key_id: str
    verified: bool | None = Field(
        description="The signature verified with a published key (null: unknown key)"
    )


class VerdictOut(BaseModel):
    ok: bool
    checked: int = Field(description="Records whose hash and link were checked")
    first_bad_seq: int | None
    reason: str | None
    last_checkpoint: CheckpointOut | None


@router.get("", response_model=AuditPageOut, responses=problem_responses(*READERS))
async def audit_records(
    _: Auditor,
    db: ReadOnlySession,
    actor: Annotated[Text | None, Query(max_length=320, description="Label (email, …) or user id")] = None,
    target: Annotated[
        Text | None,
        Query(max_length=260, description="Target id or `type:id`; a tenant id also finds its records"),
    ] = None,
    action: Annotated[Text | None, Query(max_length=100, description='Exact, or a prefix: "auth.*"')] = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Records before this seq")] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = 50,
) -> AuditPageOut:
    """Audit records, newest first."""
    found = await audit.page(db, actor=actor, target=target, action=action, before_seq=before, limit=limit)
    return AuditPageOut(
        records=[AuditRecordOut.model_validate(r, from_attributes=True) for r in found],
        next_before=found[-1].seq if len(found) == limit else None,
    )


@router.get("/verify", response_model=VerdictOut, responses=problem_responses(*READERS))
async def verify_audit_log(_: Auditor, db: WriteSession, svc: Svc) -> VerdictOut:
    """Recompute the chain and check the checkpoints: whether the log is intact, or its first bad record.

    A write session for a read: the check runs in one REPEATABLE READ transaction, which the
    autocommit read session cannot hold."""
    verdict = await audit.verify(db, keys=svc.keys.public_keys())
    checkpoint = verdict.last_checkpoint
    return VerdictOut(
        ok=verdict.ok,
        checked=verdict.checked,
        first_bad_seq=verdict.first_bad_seq,
        reason=verdict.reason,
        last_checkpoint=CheckpointOut.model_validate(checkpoint, from_attributes=True)
        if checkpoint
        else None,
    )
