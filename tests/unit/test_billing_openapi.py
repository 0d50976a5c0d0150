"""The billing service's OpenAPI document lists the problems each route may answer with."""

from __future__ import annotations

import re

import httpx
import pytest

from prognetwork.billing import problems
from prognetwork.billing.app import create_app
from prognetwork.billing.settings import BillingSettings
from prognetwork.kit.problems import ProblemType

KIND = re.compile(r"\(([a-z0-9-]+)\)")


@pytest.fixture
async def document(tmp_path) -> dict:
    app = create_app(BillingSettings(PROG_ENV="development", PROG_STATE_DIR=str(tmp_path), SECRETS_DIR=str(tmp_path)))
    # The document needs no dependency: no lifespan, nothing started.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def kinds(document: dict, method: str, path: str) -> dict[int, set[str]]:
    responses = document["paths"][path][method]["responses"]
    return {int(status): set(KIND.findall(r["description"])) for status, r in responses.items()
            if "application/problem+json" in r.get("content", {})}


async def test_every_billing_problem_is_documented_on_some_route(document):
    catalogue = {v.kind for v in vars(problems).values() if isinstance(v, ProblemType)}
    found = {kind for path, methods in document["paths"].items() for method in methods
             for listed in kinds(document, method, path).values() for kind in listed}
    assert catalogue <= found


async def test_checkout_documents_who_may_buy_what_and_stripe_failures(document):
    found = kinds(document, "post", "/v1/billing/checkout")
    assert {"tenant-required", "forbidden"} <= found[403]
    assert {"unknown-plan", "plan-not-purchasable"} <= found[422]
    assert found[502] == {"stripe-error"} and "stripe-unavailable" in found[503]
    webhook = kinds(document, "post", "/v1/billing/webhooks/stripe")
    assert {"invalid-signature", "invalid-webhook"} <= webhook[400] and 401 not in webhook
