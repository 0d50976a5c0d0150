"""The billing service for tests: served on a real port (the Stripe fake delivers webhooks to it
over HTTP), tenant tokens, signed webhook bodies, and reads of its tenant-scoped tables."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import stripe
import uvicorn
from prometheus_client import REGISTRY

from prognetwork.billing.app import create_app
from prognetwork.billing.settings import BillingSettings
from tests.helpers.polling import eventually
from tests.helpers.ports import free_port
from tests.helpers.stripe_fake import StripeFake, running_stripe_fake
from tests.helpers.tokens import mint

WEBHOOK_PATH = "/v1/billing/webhooks/stripe"
# A webhook secret being rotated out: configured beside the fake's, so both verify.
ROTATED_OUT_SECRET = "whsec_rotated_out_but_still_accepted"


class PortServer:
    """An ASGI app served by uvicorn on a port chosen before it starts, in a thread of its own."""

    def __init__(self, app: Any, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        eventually(lambda: self.server.started or not self.thread.is_alive(), timeout=30, what="server to start")
        assert self.server.started, "the billing service failed to start"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@dataclass
class BillingUnderTest:
    fake: StripeFake
    server: PortServer
    settings: BillingSettings

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30)


@contextmanager
def running_billing(database_url: str, redis_url: str, jwks_url: str, directory: Path,
                    **overrides: str) -> Iterator[BillingUnderTest]:
    """The Stripe fake and the billing service wired to each other: the fake sends its webhooks to
    the service, the service calls the fake's API with the fake's key. Two webhook secrets are
    configured, `ROTATED_OUT_SECRET` and the fake's, as during a rotation."""
    port = free_port()
    with running_stripe_fake([f"http://127.0.0.1:{port}{WEBHOOK_PATH}"], directory) as fake:
        secrets = directory / "secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "STRIPE_SECRET_KEY").write_text(fake.api_key)
        (secrets / "STRIPE_WEBHOOK_SECRET").write_text(f"{ROTATED_OUT_SECRET},{fake.webhook_secret}")
        settings = BillingSettings(**{
            "PROG_ENV": "development", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "JWKS_URL": jwks_url + "/.well-known/jwks.json", "PROG_STATE_DIR": str(directory / "state"),
            "SECRETS_BACKEND": "file", "SECRETS_DIR": str(secrets), "SECRETS_CACHE_TTL_SECONDS": "0",
            "STRIPE_API_BASE": fake.url, **overrides,
        })
        server = PortServer(create_app(settings), port)
        try:
            yield BillingUnderTest(fake, server, settings)
        finally:
            server.close()


def tenant_token(signing_key: str, user: uuid.UUID, tenant: uuid.UUID | None, tenant_role: str | None = None,
                 lifetime: int = 600) -> str:
    """An access token as the user service issues it after a switch into `tenant` with `tenant_role`."""
    return mint(signing_key, user, tid=tenant, tenant_role=tenant_role, lifetime=lifetime)


def signed(event: dict[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """A webhook body and its headers, signed as Stripe signs (at `timestamp`, default now)."""
    body = json.dumps(event, indent=2)
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp)
    return body.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


def stripe_event(event_type: str, data_object: dict[str, Any]) -> dict[str, Any]:
    """A snapshot event in Stripe's shape, with a fresh id."""
    return {"id": f"evt_test_{uuid.uuid4().hex}", "object": "event", "type": event_type,
            "api_version": "2026-10-28.endive", "created": int(time.time()), "livemode": False,
            "data": {"object": data_object}}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def scoped_count(conn, table: str, tenant: uuid.UUID) -> int:
    """Rows of a tenant-scoped table a transaction scoped to `tenant` sees (as kit.tenancy.scope
    scopes one), whatever the WHERE clause: row-level security decides."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('role', 'prognetwork_tenant', true), "
                           "set_config('app.tenant_id', $1, true)", str(tenant))
        return await conn.fetchval(f"SELECT count(*) FROM {table}")


async def events_of(conn, tenant: uuid.UUID, event_type: str) -> list[dict]:
    rows = await conn.fetch("SELECT payload FROM events WHERE tenant_id = $1 AND type = $2 ORDER BY seq",
                            tenant, event_type)
    return [json.loads(row["payload"]) if isinstance(row["payload"], str) else row["payload"] for row in rows]


async def customer_of(conn, tenant: uuid.UUID) -> str | None:
    """The tenant's Stripe customer id (the test's superuser connection is not subject to the policy)."""
    return await conn.fetchval("SELECT stripe_customer_id FROM billing_customers WHERE tenant_id = $1", tenant)


def subscription_id(fake: StripeFake, customer: str) -> str:
    """The newest subscription the fake created for `customer`, from its events."""
    found = [e["data"]["object"]["id"] for e in fake.events()
             if e["type"] == "customer.subscription.created" and e["data"]["object"]["customer"] == customer]
    assert found, f"no subscription for {customer}"
    return found[-1]


def event_ids(fake: StripeFake, customer: str, event_type: str) -> list[str]:
    return [e["id"] for e in fake.events()
            if e["type"] == event_type and e["data"]["object"].get("customer") == customer]
