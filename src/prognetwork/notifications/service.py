"""Turning events into emails, and delivering them with retries.

The consumer writes one `EmailMessage` per triggering event (unique by event id) in the
same transaction that advances its cursor, so a crash can neither lose nor duplicate it.
The delivery loop then sends due messages (SKIP LOCKED, so replicas share the work),
retrying with exponential backoff and jitter until `EMAIL_MAX_ATTEMPTS`.
"""

from __future__ import annotations

import asyncio
import html
import random
import uuid
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prognetwork.kit.events import Event, relay_stop, wait_for
from prognetwork.kit.settings import Settings
from prognetwork.notifications.email import DeliveryError, EmailProvider
from prognetwork.notifications.models import EmailMessage

log = structlog.get_logger("prognetwork.notifications")
EMAILS_SENT = Counter("emails_sent", "Emails delivered to the provider.", ("provider", "kind"))
EMAILS_FAILED = Counter("emails_failed", "Email delivery attempts that failed.", ("provider", "final"))
HANDLED_TYPES = frozenset({"user.email_verification_requested"})
BATCH = 20


def verification_email(payload: dict) -> tuple[str, str, str]:
    name, url = payload.get("name") or "there", payload["verify_url"]
    hours = max(1, int(payload.get("expires_in", 86400)) // 3600)
    subject = "Verify your ProgNetwork email address"
    text = (
        f"Hi {name},\n\nConfirm your email address to finish setting up your ProgNetwork account:\n\n"
        f"{url}\n\nThe link works once and expires in {hours} hours. "
        "If you did not sign up, ignore this message.\n"
    )
    body = (
        f"<p>Hi {html.escape(name)},</p><p>Confirm your email address to finish setting up your "
        f'ProgNetwork account:</p><p><a href="{html.escape(url)}">Verify my email address</a></p>'
        f"<p>The link works once and expires in {hours} hours. If you did not sign up, ignore this message.</p>"
    )
    return subject, text, body


async def handle_event(session: AsyncSession, event: Event) -> None:
    if event.type != "user.email_verification_requested":
        return
    subject, text, body = verification_email(event.payload)
    await session.execute(
        insert(EmailMessage)
        .values(
            id=uuid.uuid4(), event_id=event.id, kind="verify-email", recipient=event.payload["email"],
            subject=subject, text=text, html=body,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )


def backoff(attempts: int) -> timedelta:
    base = min(300.0, 2.0 ** attempts)
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


async def deliver_due(
    sessions: async_sessionmaker[AsyncSession], provider: EmailProvider, settings: Settings
) -> int:
    """Send what is due now; returns how many messages were attempted."""
    async with sessions() as session, session.begin():
        due = (
            await session.execute(
                select(EmailMessage)
                .where(EmailMessage.status == "pending", EmailMessage.next_attempt_at <= datetime.now(UTC))
                .order_by(EmailMessage.next_attempt_at)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        ).scalars().all()
        for message in due:
            await _attempt(session, provider, settings, message)
    return len(due)


async def _attempt(session: AsyncSession, provider: EmailProvider, settings: Settings, message: EmailMessage) -> None:
    now = datetime.now(UTC)
    message.attempts += 1
    message.provider = provider.name
    try:
        # A savepoint: one message failing inside PostgreSQL does not undo the others.
        async with session.begin_nested():
            message.provider_message_id = await provider.send(session, message, settings.email_from)
    except Exception as exc:  # any failure is recorded on the message and retried or given up
        permanent = isinstance(exc, DeliveryError) and exc.permanent
        final = permanent or message.attempts >= settings.email_max_attempts
        message.last_error = str(exc)[:500] or type(exc).__name__
        message.status = "failed" if final else "pending"
        message.next_attempt_at = now + backoff(message.attempts)
        EMAILS_FAILED.labels(provider.name, str(final).lower()).inc()
        log.warning(
            "email delivery failed", message_id=str(message.id), attempts=message.attempts,
            final=final, error=message.last_error,
        )
        return
    message.status = "sent"
    message.sent_at = now
    EMAILS_SENT.labels(provider.name, message.kind).inc()
    log.info("email sent", message_id=str(message.id), kind=message.kind, provider=provider.name)


async def delivery_loop(
    sessions: async_sessionmaker[AsyncSession], provider: EmailProvider, settings: Settings,
    wake: asyncio.Event, stop: asyncio.Event, idle_seconds: float = 1.0,
) -> None:
    failures = 0
    relay = relay_stop(stop, wake)
    while not stop.is_set():
        try:
            attempted = await deliver_due(sessions, provider, settings)
            failures = 0
        except Exception:
            failures += 1
            log.exception("delivery pass failed; retrying", attempt=failures)
            await wait_for(stop, min(30.0, 0.2 * 2**failures))
            continue
        if attempted < BATCH:
            await wait_for(wake, idle_seconds)
            wake.clear()
    relay.cancel()
