"""A local Stripe-compatible server for development and tests, which the real `stripe` SDK talks to.

It implements a small subset of Stripe's v1 HTTP API (customers, prices, products, Checkout and
billing-portal sessions, subscriptions, invoices, events) with Stripe's form encoding, object
shapes for API version 2026-10-28.endive, error bodies and idempotency keys; hosted checkout,
portal and invoice pages a person or a test can click through; and webhook delivery signed as
Stripe signs (`Stripe-Signature: t=…,v1=…`). Control endpoints under `/_fake` reach the cases real
Stripe makes hard to produce: failed renewals, status changes, webhooks held, resent or reordered,
and API outages.

State lives in memory and is gone when the process stops. The fake refuses live keys (`sk_live_…`):
it only ever stands in for Stripe's test mode. Run it with `python -m prognetwork.fakes.stripe`.
"""
