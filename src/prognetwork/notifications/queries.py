"""The notification service's SQL for its readers: the admin API's listing of the emails it owes.

The delivery loop's statements stay beside it (service.py); these only read.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, tuple_

from prognetwork.kit.db import ReadSession
from prognetwork.notifications.models import EmailMessage


async def emails(
    db: ReadSession, recipient: str | None, status: str | None, limit: int, before: uuid.UUID | None
) -> list[EmailMessage]:
    """Emails newest first (by creation, then id), optionally to one recipient or in one state, from
    the one after the email `before` (the previous page's last). An unknown `before` ends the list."""
    query = select(EmailMessage).order_by(EmailMessage.created_at.desc(), EmailMessage.id.desc()).limit(limit)
    if recipient is not None:
        query = query.where(EmailMessage.recipient == recipient.lower())
    if status is not None:
        query = query.where(EmailMessage.status == status)
    if before is not None:
        cursor = (
            await db.execute(
                select(EmailMessage.created_at, EmailMessage.id).where(EmailMessage.id == before)
            )
        ).one_or_none()
        if cursor is None:
            return []
        query = query.where(tuple_(EmailMessage.created_at, EmailMessage.id) < tuple_(*cursor))
    return list((await db.execute(query)).scalars().all())
