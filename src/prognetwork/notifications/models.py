from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from prognetwork.kit.db import Base


class EmailMessage(Base):
    """An email the service owes someone: one per triggering event, delivered with retries."""

    __tablename__ = "email_messages"
    __table_args__ = (
        Index("ix_email_messages_due", "status", "next_attempt_at"),
        # The admin API lists emails newest first, all of them or one recipient's.
        Index("ix_email_messages_created_at_id", "created_at", "id"),
        Index("ix_email_messages_recipient_created_at", "recipient", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # The event that asked for this email: unique, so a redelivered event adds nothing.
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    kind: Mapped[str] = mapped_column(String(100))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(500))
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), server_default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    provider: Mapped[str | None] = mapped_column(String(50), default=None)
    provider_message_id: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class DevOutboxMessage(Base):
    """The development mailbox: what SendGrid would have delivered."""

    __tablename__ = "dev_outbox"
    __table_args__ = (Index("ix_dev_outbox_recipient_sent_at", "recipient", "sent_at"),)

    # The message's id: sending the same message twice stores it once.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    recipient: Mapped[str] = mapped_column(String(320))
    sender: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(500))
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
