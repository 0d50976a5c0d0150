"""The pure rules behind tenants: slugs from names, the order of roles, and the two tenant emails."""

from __future__ import annotations

import pytest

from prognetwork.notifications.service import payment_failed_email, tenant_invitation_email
from prognetwork.users.tenants import outranks, slugify


@pytest.mark.parametrize("name,slug", [
    ("Acme Rockets", "acme-rockets"),
    ("  Café Ünïcode — Ltd.  ", "cafe-unicode-ltd"),
    ("a--b__c", "a-b-c"),
    ("東京", "tenant"),
    ("!!!", "tenant"),
    ("x" * 100, "x" * 48),
    ("a" * 47 + " b", "a" * 47),  # cut at the limit, never ending in a hyphen
])
def test_slugs_are_short_lowercase_ascii_words(name, slug):
    assert slugify(name) == slug


def test_roles_rank_owner_over_admin_over_member():
    assert outranks("owner", "admin") and outranks("admin", "admin") and outranks("admin", "member")
    assert not outranks("member", "admin") and not outranks("admin", "owner")


INVITATION = {"tenant_name": "Acme", "role": "admin", "accept_url": "https://app.example/accept-invitation?token=t",
              "expires_in": 7 * 86400}


def test_the_invitation_names_the_tenant_and_links_to_the_acceptance():
    subject, text, html = tenant_invitation_email(INVITATION)
    assert subject == "You are invited to join Acme on ProgNetwork"
    assert "https://app.example/accept-invitation?token=t" in text and "168 hours" in text and "as admin" in text
    assert 'href="https://app.example/accept-invitation?token=t"' in html


def test_the_invitation_keeps_the_typed_name_short_and_inert():
    subject, _, html = tenant_invitation_email({**INVITATION, "tenant_name": "<a href=x>" + "y" * 100})
    assert len(subject) < 120 and subject.endswith("… on ProgNetwork")
    assert "<a href=x>" not in html and "&lt;a href=x&gt;" in html


@pytest.mark.parametrize("amount,currency,shown", [
    (4200, "eur", " of 42.00 EUR "),
    (123456, "usd", " of 1,234.56 USD "),
    (5000, "jpy", " of 5,000 JPY "),
    (None, "eur", "payment for"),
    (12, "<b>", "payment for"),
])
def test_the_payment_notice_shows_what_was_due_when_it_can(amount, currency, shown):
    subject, text, _ = payment_failed_email({"tenant_name": "Acme", "billing_url": "https://app.example/billing",
                                             "amount_due": amount, "currency": currency})
    assert subject == "Payment failed for Acme on ProgNetwork"
    assert shown in text and "https://app.example/billing" in text
