"""The notification service's part of the platform admin API: the emails it owes, in every state.

Authorised here, by the caller's platform role (the verified access token's `role`): `admin` and
`operator` may read; anyone else is answered 403 `forbidden`, naming the role required.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from prognetwork.kit.auth import PLATFORM_READERS, require_platform_role
from prognetwork.kit.problems import AUTHENTICATED, PLATFORM_ROLE_REQUIRED, problem_responses
from prognetwork.kit.validation import Text
from prognetwork.notifications import queries
from prognetwork.notifications.deps import Caller, ReadOnlySession
from prognetwork.notifications.models import EmailMessage

router = APIRouter(prefix="/v1/admin", tags=["admin"])
EmailStatus = Literal["queued", "sent", "failed"]
# The API's names for the states the delivery loop keeps (`pending` waits for its next attempt).
STORED_STATUS: dict[EmailStatus, str] = {"queued": "pending", "sent": "sent", "failed": "failed"}
SHOWN_STATUS: dict[str, EmailStatus] = {stored: shown for shown, stored in STORED_STATUS.items()}


async def reader(claims: Caller) -> dict[str, Any]:
    require_platform_role(claims, PLATFORM_READERS)
    return claims


Reader = Annotated[dict[str, Any], Depends(reader)]


class AdminEmailOut(BaseModel):
    id: uuid.UUID
    kind: str = Field(description="What the email is: verify-email, password-reset, tenant-invitation, …")
    recipient: str
    subject: str
    status: EmailStatus
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When a queued email is tried next; null otherwise")

    @classmethod
    def of(cls, message: EmailMessage) -> AdminEmailOut:
        status = SHOWN_STATUS.get(message.status, "queued")
        return cls(
            id=message.id,
            kind=message.kind,
            recipient=message.recipient,
            subject=message.subject,
            status=status,
            attempts=message.attempts,
            last_error=message.last_error,
            created_at=message.created_at,
            sent_at=message.sent_at,
            next_attempt_at=message.next_attempt_at if status == "queued" else None,
        )


class EmailsPageOut(BaseModel):
    emails: list[AdminEmailOut]
    next_before: uuid.UUID | None = Field(
        description="Pass as `before` for the next page; null on the last one"
    )


@router.get(
    "/emails",
    response_model=EmailsPageOut,
    responses=problem_responses(*AUTHENTICATED, PLATFORM_ROLE_REQUIRED),
)
async def list_emails(
    caller: Reader,
    db: ReadOnlySession,
    recipient: Annotated[
        Text | None, Query(min_length=1, max_length=320, description="Only emails to this address")
    ] = None,
    status: Annotated[EmailStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    before: Annotated[uuid.UUID | None, Query(description="`next_before` of the page before")] = None,
) -> EmailsPageOut:
    """The emails the service owes or sent, newest first."""
    stored = STORED_STATUS[status] if status is not None else None
    found = await queries.emails(db, recipient, stored, limit + 1, before)
    page = found[:limit]
    return EmailsPageOut(
        emails=[AdminEmailOut.of(m) for m in page],
        next_before=page[-1].id if len(found) > limit else None,
    )
