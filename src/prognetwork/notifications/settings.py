"""The notification service's settings: the sender, delivery retries and the SendGrid endpoint."""

from __future__ import annotations

from pydantic import Field

from prognetwork.kit.settings import Settings


class NotificationSettings(Settings):
    email_from: str = Field("ProgNetwork <no-reply@prognetwork.dev>", alias="EMAIL_FROM")
    email_max_attempts: int = Field(8, alias="EMAIL_MAX_ATTEMPTS", ge=1)
    sendgrid_host: str = Field("https://api.sendgrid.com", alias="SENDGRID_HOST")
