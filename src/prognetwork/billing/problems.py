"""The problems the billing service answers with, besides the kit's shared ones (kit.problems)."""

from prognetwork.kit.problems import ProblemType

INVALID_SIGNATURE = ProblemType(400, "invalid-signature", "The webhook's Stripe signature is not valid")
INVALID_WEBHOOK = ProblemType(400, "invalid-webhook", "The webhook's body is not a Stripe event")
TENANT_REQUIRED = ProblemType(403, "tenant-required", "The access token names no tenant")
FORBIDDEN = ProblemType(403, "forbidden", "The caller's tenant role does not allow this")
NO_BILLING_ACCOUNT = ProblemType(409, "no-billing-account", "The tenant has no billing account yet")
ALREADY_SUBSCRIBED = ProblemType(409, "already-subscribed", "The tenant already has a subscription")
UNKNOWN_PLAN = ProblemType(422, "unknown-plan", "No such plan")
PLAN_NOT_PURCHASABLE = ProblemType(422, "plan-not-purchasable", "The plan cannot be bought")
STRIPE_ERROR = ProblemType(502, "stripe-error", "Stripe refused the request")
STRIPE_UNAVAILABLE = ProblemType(503, "stripe-unavailable", "Stripe cannot be reached")
# The admin API (`/v1/admin/billing/…`): the caller's platform role (the token's `role`).
