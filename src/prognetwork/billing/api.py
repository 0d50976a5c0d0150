"""HTTP routes of the billing service: thin translations onto `Billing` and `Webhooks`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from prognetwork.billing import problems
from prognetwork.billing.deps import Manager, Member, RequestId, Svc, WebhooksDep, WriteSession
from prognetwork.billing.plans import FREE_PLAN, Entitlements
from prognetwork.billing.state import SubscriptionRecord
from prognetwork.kit.audit import RequestOrigin, origin_of
from prognetwork.kit.problems import AUTHENTICATED, BODY_TOO_LARGE, problem_responses
from prognetwork.kit.validation import Text

router = APIRouter(tags=["billing"])
# Checkout and portal URLs let whoever holds them act on the tenant's billing: never cached.
NO_STORE = {"Cache-Control": "no-store"}
NO_SUBSCRIPTION = "none"  # the status served for a tenant that never subscribed
TENANT_MEMBER = (*AUTHENTICATED, problems.TENANT_REQUIRED)
STRIPE = (problems.STRIPE_ERROR, problems.STRIPE_UNAVAILABLE)


class PlanOut(BaseModel):
    name: str
    price_id: str | None = Field(description="The Stripe price; null for the free plan, which is not sold")
    seats: int
    features: list[str]


class PlansOut(BaseModel):
    plans: list[PlanOut]


class CheckoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: Text = Field(min_length=1, max_length=40, description="The name of a plan with a price")


class CheckoutOut(BaseModel):
    url: str = Field(description="Stripe's hosted checkout page: send the user there")
    session_id: str


class PortalOut(BaseModel):
    url: str = Field(description="Stripe's billing portal for the tenant: send the user there")


class SubscriptionOut(BaseModel):
    plan: str
    status: str = Field(
        description=f"Stripe's subscription status, or {NO_SUBSCRIPTION!r} when there is none"
    )
    current_period_end: datetime | None
    cancel_at_period_end: bool
    seats: int

    @classmethod
    def of(cls, record: SubscriptionRecord | None, free: Entitlements) -> SubscriptionOut:
        if record is None:
            return cls(
                plan=FREE_PLAN,
                status=NO_SUBSCRIPTION,
                current_period_end=None,
                cancel_at_period_end=False,
                seats=free.seats,
            )
        return cls(
            plan=record.plan,
            status=record.status,
            current_period_end=record.current_period_end,
            cancel_at_period_end=record.cancel_at_period_end,
            seats=record.seats,
        )


class EntitlementsOut(BaseModel):
    plan: str = Field(description="The plan in effect (free when the subscription no longer pays)")
    seats: int
    features: list[str]


class WebhookOut(BaseModel):
    received: bool = True
    outcome: str = Field(description="processed, duplicate or ignored")


@router.get("/v1/billing/plans", summary="The plans a tenant can be on", responses=problem_responses())
async def plans(svc: Svc) -> PlansOut:
    return PlansOut(
        plans=[
            PlanOut(name=p.name, price_id=p.price_id, seats=p.seats, features=p.features) for p in svc.plans()
        ]
    )


@router.post(
    "/v1/billing/checkout",
    summary="Start a Stripe Checkout for the caller's tenant (owner or admin)",
    responses=problem_responses(
        *TENANT_MEMBER,
        problems.FORBIDDEN,
        problems.ALREADY_SUBSCRIBED,
        problems.UNKNOWN_PLAN,
        problems.PLAN_NOT_PURCHASABLE,
        *STRIPE,
    ),
)
async def checkout(
    svc: Svc,
    db: WriteSession,
    manager: Manager,
    body: CheckoutIn,
    request_id: RequestId,
    response: Response,
    origin: RequestOrigin,
) -> CheckoutOut:
    session = await svc.start_checkout(db, manager, body.plan, request_id, origin=origin)
    response.headers.update(NO_STORE)
    return CheckoutOut(url=session.url, session_id=session.id)


@router.post(
    "/v1/billing/portal",
    summary="Open Stripe's billing portal for the caller's tenant (owner or admin)",
    responses=problem_responses(*TENANT_MEMBER, problems.FORBIDDEN, problems.NO_BILLING_ACCOUNT, *STRIPE),
)
async def portal(
    svc: Svc, db: WriteSession, manager: Manager, request_id: RequestId, response: Response
) -> PortalOut:
    url = await svc.open_portal(db, manager, request_id)
    response.headers.update(NO_STORE)
    return PortalOut(url=url)


@router.get(
    "/v1/billing/subscription",
    summary="The tenant's subscription as Stripe last described it",
    responses=problem_responses(*TENANT_MEMBER),
)
async def subscription(svc: Svc, db: WriteSession, member: Member) -> SubscriptionOut:
    # A write session for a read: the tenant scope needs a transaction (see service.py).
    return SubscriptionOut.of(await svc.subscription(db, member.tenant_id), svc.catalogue.fallback())


@router.get(
    "/v1/billing/entitlements",
    summary="What the tenant may use now: its plan's, or the free plan's once a subscription stops paying",
    responses=problem_responses(*TENANT_MEMBER),
)
async def entitlements(svc: Svc, db: WriteSession, member: Member) -> EntitlementsOut:
    found = await svc.entitlements(db, member.tenant_id)
    return EntitlementsOut(plan=found.plan, seats=found.seats, features=list(found.features))


@router.post(
    "/v1/billing/webhooks/stripe",
    summary="Stripe's webhook endpoint (verified by Stripe's signature, no access token)",
    responses=problem_responses(
        problems.INVALID_SIGNATURE, problems.INVALID_WEBHOOK, BODY_TOO_LARGE, *STRIPE
    ),
)
async def stripe_webhook(
    request: Request,
    webhooks: WebhooksDep,
    db: WriteSession,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookOut:
    # The raw bytes: the signature covers them exactly, not a re-encoding of parsed JSON.
    outcome = await webhooks.receive(db, await request.body(), stripe_signature, origin=origin_of(request))
    return WebhookOut(outcome=outcome)
