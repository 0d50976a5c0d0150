"""The notification service's ASGI app: the email consumer, the delivery loop, the dev outbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from prognetwork.kit.app import Connections, Lifecycle, create_service_app
from prognetwork.kit.db import Database
from prognetwork.kit.events import Consumer
from prognetwork.kit.secrets import MissingSecret
from prognetwork.notifications import SPEC, api, service
from prognetwork.notifications.email import SENDGRID_SECRET, EmailProvider, OutboxProvider, SendGridProvider
from prognetwork.notifications.settings import NotificationSettings

CONSUMER_NAME = "notifications.email"


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: NotificationSettings
    database: Database
    provider: EmailProvider
    # Set by the consumer after it commits new messages, so delivery starts without waiting a poll.
    wake_delivery: asyncio.Event = field(default_factory=asyncio.Event)


def choose_provider(settings: NotificationSettings) -> EmailProvider:
    if settings.secrets.get(SENDGRID_SECRET) is not None:
        return SendGridProvider(settings.secrets, settings.sendgrid_host)
    if settings.is_development:
        return OutboxProvider()
    raise MissingSecret(SENDGRID_SECRET)


async def consume(runtime: Runtime, lifecycle: Lifecycle) -> None:
    consumer = Consumer(
        CONSUMER_NAME,
        runtime.database.sessions,
        runtime.settings.database_dsn,
        service.handle_event,
        types=service.HANDLED_TYPES,
        after_commit=runtime.wake_delivery.set,
    )
    await consumer.run(lifecycle.stop)


async def deliver(runtime: Runtime, lifecycle: Lifecycle) -> None:
    await service.delivery_loop(
        runtime.database.sessions, runtime.provider, runtime.settings, runtime.wake_delivery, lifecycle.stop
    )


def create_app(settings: NotificationSettings | None = None) -> FastAPI:
    settings = settings or NotificationSettings()
    provider = choose_provider(settings)  # at start: a missing SendGrid key fails here, not at first email

    @asynccontextmanager
    async def open_runtime(
        settings: NotificationSettings, connections: Connections
    ) -> AsyncIterator[Runtime]:
        yield Runtime(settings, connections.database, provider)

    routers = [api.dev_router] if settings.is_development else []
    return create_service_app(SPEC, settings, routers, runtime=open_runtime, background=[consume, deliver])
