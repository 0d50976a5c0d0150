"""The notification service (port 3004): emails driven by the event log."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from prognetwork.kit.app import Runtime, create_service_app
from prognetwork.kit.events import Consumer
from prognetwork.kit.secrets import MissingSecret
from prognetwork.kit.settings import Settings
from prognetwork.notifications import api, service
from prognetwork.notifications.email import SENDGRID_SECRET, EmailProvider, OutboxProvider, SendGridProvider

SERVICE = "notifications"
CONSUMER_NAME = "notifications.email"


def choose_provider(settings: Settings) -> EmailProvider:
    if settings.secrets.get(SENDGRID_SECRET) is not None:
        return SendGridProvider(settings.secrets, settings.sendgrid_host)
    if settings.is_development:
        return OutboxProvider()
    raise MissingSecret(SENDGRID_SECRET)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    provider = choose_provider(settings)
    wake_delivery = asyncio.Event()

    async def consume(runtime: Runtime) -> None:
        assert runtime.sessions is not None
        consumer = Consumer(
            CONSUMER_NAME, runtime.sessions, settings.database_dsn, service.handle_event,
            types=service.HANDLED_TYPES, after_commit=wake_delivery.set,
        )
        await consumer.run(runtime.stop)

    async def deliver(runtime: Runtime) -> None:
        assert runtime.sessions is not None
        await service.delivery_loop(runtime.sessions, provider, settings, wake_delivery, runtime.stop)

    routers = [api.dev_router] if settings.is_development else []
    app = create_service_app(SERVICE, settings, routers, background=[consume, deliver])
    app.state.email_provider = provider
    return app
