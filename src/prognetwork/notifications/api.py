"""HTTP routes of the notification service: the development outbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from prognetwork.kit.problems import problem_responses
from prognetwork.kit.validation import Text
from prognetwork.notifications.deps import ReadOnlySession
from prognetwork.notifications.models import DevOutboxMessage

# Mounted only when PROG_ENV=development; elsewhere the path does not exist (404).
dev_router = APIRouter(tags=["development"])


class OutboxMessageOut(BaseModel):
    id: uuid.UUID
    to: str
    sender: str
    subject: str
    text: str
    html: str
    sent_at: datetime


@dev_router.get("/v1/dev/outbox", response_model=list[OutboxMessageOut], responses=problem_responses())
async def outbox(
    db: ReadOnlySession,
    to: Annotated[Text | None, Query(max_length=320, description="Only messages to this address")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[OutboxMessageOut]:
    query = (
        select(DevOutboxMessage).order_by(DevOutboxMessage.sent_at.desc(), DevOutboxMessage.id).limit(limit)
    )
    if to:
        query = query.where(DevOutboxMessage.recipient == to.lower())
    rows = (await db.execute(query)).scalars().all()
    return [
        OutboxMessageOut(
            id=m.id,
            to=m.recipient,
            sender=m.sender,
            subject=m.subject,
            text=m.text,
            html=m.html,
            sent_at=m.sent_at,
        )
        for m in rows
    ]
