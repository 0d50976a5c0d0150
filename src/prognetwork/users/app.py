"""The user service's ASGI app: its routes, its runtime, the purge of expired registrations, the
consumer of billing's events (a tenant's plan and seats, payment failures told to its owners) and
the audit log's signed checkpoints."""

from __future__ import annotations

import structlog
from fastapi import FastAPI

from prognetwork.kit import retry
from prognetwork.kit.app import Lifecycle, create_service_app
from prognetwork.kit.credentials import listener_dsn
from prognetwork.kit.events import Consumer
from prognetwork.users import SPEC, admin_api, api, audit_api, tenant_api
from prognetwork.users.audit_log import sign_checkpoints
from prognetwork.users.keys import KeyRing
from prognetwork.users.runtime import Runtime, runtime_factory
from prognetwork.users.settings import UsersSettings
from prognetwork.users.tenants import BILLING_EVENT_TYPES

PURGE_EVERY_SECONDS = 3600.0
PURGE_RETRY_CAP_SECONDS = 300.0
BILLING_CONSUMER = "user-service.billing"
log = structlog.get_logger("prognetwork.users")


async def purge_unverified(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Every replica runs it; the DELETE is idempotent, so overlapping runs only repeat a no-op.
    # After a failure (an outage) it tries again within minutes rather than at the next round.
    async def purge() -> None:
        async with runtime.database.sessions() as db:
            purged = await runtime.accounts.purge_unverified(db)
        if purged:
            log.info("expired registrations purged", count=purged)

    backoff = retry.Backoff("users.purge_unverified", base=1.0, cap=PURGE_RETRY_CAP_SECONDS)
    await retry.run_forever(backoff, purge, lifecycle.stop, idle=PURGE_EVERY_SECONDS)


async def consume_billing(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Durable: its cursor advances in the transaction that applies each event, so a restart
    # neither loses nor repeats one; replicas share it (one works, the others stand by).
    consumer = Consumer(
        BILLING_CONSUMER,
        runtime.database.sessions,
        listener_dsn(runtime.settings),
        runtime.tenants.handle_billing_event,
        types=BILLING_EVENT_TYPES,
    )
    await consumer.run(lifecycle.stop)


async def follow_revocations(runtime: Runtime, lifecycle: Lifecycle) -> None:
    # Signed-out sessions answered from a followed copy (kit.revocation): no Redis round trip per
    # request, so neither a slow nor a hung Redis reaches the request path.
    await runtime.accounts.revocations.follow(lifecycle.stop)


def create_app(settings: UsersSettings | None = None) -> FastAPI:
    settings = settings or UsersSettings()
    keys = KeyRing(settings)
    keys.jwks()  # fail at start, not at first login, if the signing keys are unusable
    return create_service_app(
        SPEC,
        settings,
        [api.router, tenant_api.router, admin_api.router, audit_api.router],
        runtime=runtime_factory(keys),
        background=[purge_unverified, consume_billing, sign_checkpoints, follow_revocations],
    )
