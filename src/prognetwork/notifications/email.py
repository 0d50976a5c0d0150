"""Email providers: SendGrid (the official SDK) and the development outbox in PostgreSQL."""

from __future__ import annotations

import asyncio
import urllib.error
from typing import Protocol

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, Mail
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from prognetwork.kit.secrets import Secrets
from prognetwork.notifications.models import DevOutboxMessage, EmailMessage

SENDGRID_SECRET = "SENDGRID_API_KEY"  # noqa: S105 - the secret's name, not its value


class DeliveryError(Exception):
    """`permanent` failures are not retried (a rejected address, a bad request)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class EmailProvider(Protocol):
    name: str

    async def send(self, session: AsyncSession, message: EmailMessage, sender: str) -> str:
        """Deliver `message`; return the provider's message id."""
        ...


class SendGridProvider:
    name = "sendgrid"

    def __init__(self, secrets: Secrets, host: str) -> None:
        self.secrets = secrets
        self.host = host

    async def send(self, session: AsyncSession, message: EmailMessage, sender: str) -> str:
        mail = Mail(
            from_email=sender,
            to_emails=message.recipient,
            subject=message.subject,
            plain_text_content=message.text,
            html_content=message.html,
        )
        # Lets a webhook or support engineer tie SendGrid's record back to ours.
        mail.custom_arg = CustomArg("message_id", str(message.id))
        # Read per send (through the expiring cache) so a rotated key is picked up.
        client = SendGridAPIClient(
            api_key=self.secrets.require(SENDGRID_SECRET).get_secret_value(), host=self.host
        )
        try:
            response = await asyncio.to_thread(client.send, mail)
        except HTTPError as exc:
            status = getattr(exc, "status_code", 0)
            permanent = 400 <= status < 500 and status not in (408, 429)
            raise DeliveryError(f"SendGrid answered {status}", permanent=permanent) from None
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryError(f"SendGrid unreachable: {exc}") from None
        return response.headers.get("X-Message-Id", "") if response.headers else ""


class OutboxProvider:
    """Development only: 'sends' by storing the message where a developer can read it."""

    name = "outbox"

    async def send(self, session: AsyncSession, message: EmailMessage, sender: str) -> str:
        await session.execute(
            insert(DevOutboxMessage)
            .values(
                id=message.id,
                recipient=message.recipient,
                sender=sender,
                subject=message.subject,
                text=message.text,
                html=message.html,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        return str(message.id)
