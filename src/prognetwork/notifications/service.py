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

from prognetwork.kit import retry
from prognetwork.kit.events import Event
from prognetwork.notifications.email import DeliveryError, EmailProvider
from prognetwork.notifications.models import EmailMessage
from prognetwork.notifications.settings import NotificationSettings

log = structlog.get_logger("prognetwork.notifications")
EMAILS_SENT = Counter("emails_sent", "Emails delivered to the provider.", ("provider", "kind"))
EMAILS_FAILED = Counter("emails_failed", "Email delivery attempts that failed.", ("provider", "final"))
BATCH = 20


Email = tuple[str, str, str]  # subject, text, html


def compose(subject: str, intro: str, outro: str, link: tuple[str, str] | None = None) -> Email:
    """A greeting, a sentence, the link (text and URL) if any, and a closing sentence."""
    label, url = link if link else ("", "")
    text = "\n\n".join(["Hello,", intro, *([url] if link else []), outro]) + "\n"
    paragraphs = [f"<p>{html.escape(p)}</p>" for p in ("Hello,", intro, outro)]
    if link:
        paragraphs.insert(2, f'<p><a href="{html.escape(url)}">{html.escape(label)}</a></p>')
    return subject, text, "".join(paragraphs)


def _lifetime(payload: dict, default: int) -> str:
    seconds = int(payload.get("expires_in", default))
    return f"{seconds // 3600} hours" if seconds >= 7200 else f"{max(1, seconds // 60)} minutes"


# The address has not been proved yet, so nothing a registrant typed (their name) goes in:
# our sender must not carry someone else's text to a stranger.
def verification_email(payload: dict) -> Email:
    return compose(
        "Verify your ProgNetwork email address",
        "Confirm your email address to finish setting up your ProgNetwork account:",
        f"The link works once and expires in {_lifetime(payload, 86400)}; you will be asked for the password "
        "you chose. If you did not sign up, ignore this message.",
        ("Verify my email address", payload["verify_url"]),
    )


def password_reset_email(payload: dict) -> Email:
    return compose(
        "Reset your ProgNetwork password",
        "Someone asked to reset the password of the ProgNetwork account with this address. To choose a new one:",
        f"The link works once and expires in {_lifetime(payload, 3600)}. Resetting signs you out everywhere. "
        "If you did not ask for this, ignore this message: your password stays as it is.",
        ("Choose a new password", payload["reset_url"]),
    )


def registration_attempted_email(payload: dict) -> Email:
    return compose(
        "Someone tried to register with your address",
        "Someone tried to create a ProgNetwork account with this address, which already has one.",
        f"If it was you, log in at {payload['login_url']}, or reset your password at {payload['reset_url']}. "
        "If not, no action is needed.",
    )


# The invitee's address is not proved to us, and the tenant's name is text the inviter typed: it goes
# in, because nobody can decide on an invitation without knowing what to, but only as a name (quoted
# in the body) of at most 60 characters: no control characters (the API refuses them), HTML-escaped
# by compose(). Nothing else the inviter chose goes in: no message, no name of theirs.
def tenant_invitation_email(payload: dict) -> Email:
    name = str(payload.get("tenant_name") or "a team")
    name = name if len(name) <= 60 else name[:59] + "…"
    return compose(
        f"You are invited to join {name} on ProgNetwork",
        f"You have been invited to join the ProgNetwork tenant “{name}” as {payload.get('role', 'member')}. "
        "To accept, sign in (or register) with this email address and open:",
        f"The link works once and expires in {_lifetime(payload, 7 * 86400)}. If you did not expect this "
        "invitation, ignore this message: nothing happens unless you accept it.",
        ("Accept the invitation", payload["accept_url"]),
    )


# To a tenant's owner (a verified address, and a member of the tenant whose name it quotes).
def payment_failed_email(payload: dict) -> Email:
    # Stripe's amounts are in the currency's smallest unit; these currencies have no minor unit.
    zero_decimal = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"}
    zero_decimal |= {"xaf", "xof", "xpf"}
    currency = str(payload.get("currency") or "").lower()
    amount = payload.get("amount_due")
    if isinstance(amount, int) and not isinstance(amount, bool) and currency.isalpha():
        shown = f"{amount:,}" if currency in zero_decimal else f"{amount / 100:,.2f}"
        due = f" of {shown} {currency.upper()}"
    else:
        due = ""
    name = str(payload.get("tenant_name") or "your tenant")
    return compose(
        f"Payment failed for {name} on ProgNetwork",
        f"We could not collect the payment{due} for the ProgNetwork tenant {name}. "
        "Please update the payment method:",
        "Until a payment succeeds, the tenant may be moved to the free plan and its limits.",
        ("Update billing details", payload["billing_url"]),
    )


# Event type → (email kind, template). Events without a recipient-ready payload are skipped
# (a reset requested for an address with no account carries no token).
TEMPLATES = {
    "user.email_verification_requested": ("verify-email", verification_email, "verify_url"),
    "user.password_reset_requested": ("password-reset", password_reset_email, "reset_url"),
    "user.registration_attempted": ("registration-attempted", registration_attempted_email, "login_url"),
    "tenant.member_invited": ("tenant-invitation", tenant_invitation_email, "accept_url"),
    "tenant.payment_failed_notice": ("payment-failed", payment_failed_email, "billing_url"),
}
HANDLED_TYPES = frozenset(TEMPLATES)


async def handle_event(session: AsyncSession, event: Event) -> None:
    handler = TEMPLATES.get(event.type)
    if handler is None:
        return
    kind, template, required = handler
    if required not in event.payload:
        return
    subject, text, body = template(event.payload)
    await session.execute(
        insert(EmailMessage)
        .values(
            id=uuid.uuid4(),
            event_id=event.id,
            kind=kind,
            recipient=event.payload["email"],
            subject=subject,
            text=text,
            html=body,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )


def backoff(attempts: int) -> timedelta:
    base = min(300.0, 2.0**attempts)
    return timedelta(seconds=base * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not a secret


async def deliver_due(
    sessions: async_sessionmaker[AsyncSession], provider: EmailProvider, settings: NotificationSettings
) -> int:
    """Send what is due now; returns how many messages were attempted."""
    async with sessions() as session, session.begin():
        found = await session.execute(
            select(EmailMessage)
            .where(EmailMessage.status == "pending", EmailMessage.next_attempt_at <= datetime.now(UTC))
            .order_by(EmailMessage.next_attempt_at)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        due = found.scalars().all()
        for message in due:
            await _attempt(session, provider, settings, message)
    return len(due)


async def _attempt(
    session: AsyncSession, provider: EmailProvider, settings: NotificationSettings, message: EmailMessage
) -> None:
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
            "email delivery failed",
            message_id=str(message.id),
            attempts=message.attempts,
            final=final,
            error=message.last_error,
        )
        return
    message.status = "sent"
    message.sent_at = now
    EMAILS_SENT.labels(provider.name, message.kind).inc()
    log.info("email sent", message_id=str(message.id), kind=message.kind, provider=provider.name)


async def delivery_loop(
    sessions: async_sessionmaker[AsyncSession],
    provider: EmailProvider,
    settings: NotificationSettings,
    wake: asyncio.Event,
    stop: asyncio.Event,
    idle_seconds: float = 1.0,
) -> None:
    """Deliver due messages until `stop`: at once while whole batches are due, otherwise every
    `idle_seconds` or on `wake`. A failed pass (PostgreSQL down) is retried after 0.2 s doubling
    up to 5 s, or as soon as `wake` is set: new messages committed prove PostgreSQL is back."""

    async def deliver() -> bool:
        return await deliver_due(sessions, provider, settings) >= BATCH

    await retry.run_forever(
        retry.Backoff("notifications.delivery", cap=5.0, traceback=True),
        deliver,
        stop,
        idle=idle_seconds,
        wake=wake,
    )
