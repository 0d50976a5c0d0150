"""The notification service's ASGI app: the email consumer, the delivery loop, the dev outbox and
the admin API's view of the emails.

The admin API verifies access tokens itself (the token issuer's keys, fetched from `JWKS_URL` and
kept fresh, and the signed-out sessions in Redis). Readiness is PostgreSQL and Redis (the kit's
checks), not the issuer's keys: the user service being down must not take the replicas that
deliver email out of rotation, and a token whose key is not yet known triggers a fetch (kit.jwks).
"""

from __future__ import annotations

from fastapi import FastAPI

from prognetwork.kit.app import Lifecycle, create_service_app
from prognetwork.kit.credentials import listener_dsn
from prognetwork.kit.events import Consumer
from prognetwork.kit.secrets import MissingSecret
from prognetwork.notifications import SPEC, admin_api, api, service
from prognetwork.notifications.email import SENDGRID_SECRET, EmailProvider, OutboxProvider, SendGridProvider
from prognetwork.notifications.runtime import Runtime, runtime_factory
from prognetwork.notifications.settings import NotificationSettings

CONSUMER_NAME = "notifications.email"


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
        listener_dsn(runtime.settings),
        service.handle_event,
        types=service.HANDLED_TYPES,
        after_commit=runtime.wake_delivery.set,
    )
    await consumer.run(lifecycle.stop)


async def deliver(runtime: Runtime, lifecycle: Lifecycle) -> None:
    await service.delivery_loop(
        runtime.database.sessions, runtime.provider, runtime.settings, runtime.wake_delivery, lifecycle.stop
    )


async def keep_keys_fresh(runtime: Runtime, lifecycle: Lifecycle) -> None:
    await runtime.jwks.keep_fresh(runtime.http, runtime.settings.jwks_refresh_seconds, lifecycle.stop)


async def follow_revocations(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Signed-out sessions answered from a followed copy (kit.revocation): no Redis round trip per
    # request, so neither a slow nor a hung Redis reaches the request path.
    await runtime.revocations.follow(lifecycle.stop)


def create_app(settings: NotificationSettings | None = None) -> FastAPI:
    settings = settings or NotificationSettings()
    provider = choose_provider(settings)  # at start: a missing SendGrid key fails here, not at first email

    routers = [admin_api.router, *([api.dev_router] if settings.is_development else [])]
    return create_service_app(
        SPEC,
        settings,
        routers,
        runtime=runtime_factory(provider),
        background=[consume, deliver, keep_keys_fresh, follow_revocations],
    )
