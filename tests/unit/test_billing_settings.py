"""The billing service's configuration: development needs none; staging and production refuse
test keys, malformed webhook secrets and a Stripe address that is not Stripe's."""

from __future__ import annotations

import os

import pytest

from prognetwork.billing import SPEC
from prognetwork.billing.settings import (
    DEV_STRIPE_API_BASE,
    DEV_STRIPE_SECRET_KEY,
    DEV_STRIPE_WEBHOOK_SECRET,
    BillingSettings,
)
from prognetwork.kit.secrets import MissingSecret


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("PROG_", "STRIPE_", "BILLING_", "APP_URL", "SECRETS_")):
            monkeypatch.delenv(name)


LIVE_PLANS = '[{"name": "free", "seats": 3}, {"name": "pro", "price_id": "price_1QpR0Zt9xv8Lr3mW", "seats": 20}]'


def production(tmp_path, **secrets: str) -> dict[str, str]:
    directory = tmp_path / "secrets"
    directory.mkdir(exist_ok=True)
    for name, value in secrets.items():
        (directory / name).write_text(value)
    return {
        "PROG_ENV": "production", "APP_URL": "https://app.prognetwork.com",
        "SECRETS_BACKEND": "file", "SECRETS_DIR": str(directory), "BILLING_PLANS": LIVE_PLANS,
    }


def test_development_talks_to_the_local_fake_with_no_configuration(tmp_path):
    settings = BillingSettings(SECRETS_DIR=str(tmp_path))
    assert settings.stripe_secret_key() == DEV_STRIPE_SECRET_KEY
    assert settings.stripe_webhook_secrets() == [DEV_STRIPE_WEBHOOK_SECRET]
    assert settings.stripe_api_address == DEV_STRIPE_API_BASE == "http://127.0.0.1:12111"
    assert settings.problems(SPEC.needs, SPEC.secrets) == []
    assert [p.name for p in settings.billing_plans] == ["free", "pro", "enterprise"]


def test_outside_development_stripe_is_stripe_and_its_secrets_are_required(tmp_path):
    settings = BillingSettings(**production(tmp_path))
    assert settings.stripe_api_address == "https://api.stripe.com"
    with pytest.raises(MissingSecret):
        settings.stripe_secret_key()
    text = "\n".join(settings.problems(SPEC.needs, SPEC.secrets))
    assert "secret STRIPE_SECRET_KEY is missing" in text and "secret STRIPE_WEBHOOK_SECRET is missing" in text


def test_production_lists_every_unfit_stripe_setting_on_a_line_of_its_own(tmp_path):
    env = production(tmp_path, STRIPE_SECRET_KEY="sk_test_51Hc8Rd1Tg4Yb6Ne9Ua3Jp7Ks2Vn5",
                     STRIPE_WEBHOOK_SECRET="whsec_Jp7Ks2Vn5Hc8Rd1Tg4Yb, not_a_webhook_secret_at_all")
    problems = BillingSettings(**env, STRIPE_API_BASE="http://127.0.0.1:12111").own_problems()
    assert len(problems) == 3, problems
    assert "STRIPE_SECRET_KEY must be a live secret or restricted key" in problems[0]
    assert "STRIPE_WEBHOOK_SECRET" in problems[1] and "whsec_" in problems[1]
    assert "STRIPE_API_BASE must be unset" in problems[2] and "127.0.0.1:12111" in problems[2]


def test_production_refuses_the_fakes_price_ids(tmp_path):
    env = production(tmp_path, STRIPE_SECRET_KEY="sk_live_51Hc8Rd1Tg4Yb6Ne9Ua3Jp7Ks2Vn5",
                     STRIPE_WEBHOOK_SECRET="whsec_Jp7Ks2Vn5Hc8Rd1Tg4Yb")
    del env["BILLING_PLANS"]
    assert BillingSettings(**env).own_problems() == [
        "BILLING_PLANS must name the account's Stripe price ids in production: "
        "price_enterprise_monthly, price_pro_monthly exist only in the development fake"]


@pytest.mark.parametrize("key", ["sk_live_51Hc8Rd1Tg4Yb6Ne9Ua3Jp7Ks2Vn5", "rk_live_51Hc8Rd1Tg4Yb6Ne9Ua3Jp7Ks2Vn5"])
def test_production_accepts_live_keys_and_rotating_webhook_secrets(tmp_path, key):
    env = production(tmp_path, STRIPE_SECRET_KEY=key,
                     STRIPE_WEBHOOK_SECRET="whsec_Jp7Ks2Vn5Hc8Rd1Tg4Yb, whsec_Ua3Jp7Ks2Vn5Hc8Rd1Tg")
    settings = BillingSettings(**env, STRIPE_API_BASE="https://api.stripe.com/")
    assert settings.own_problems() == []
    assert settings.stripe_webhook_secrets() == ["whsec_Jp7Ks2Vn5Hc8Rd1Tg4Yb", "whsec_Ua3Jp7Ks2Vn5Hc8Rd1Tg"]
    assert settings.stripe_secret_key() == key


def test_links_back_to_the_web_client_derive_from_app_url(tmp_path):
    settings = BillingSettings(APP_URL="https://app.prognetwork.com/", SECRETS_DIR=str(tmp_path))
    assert settings.checkout_success_url == "https://app.prognetwork.com/billing/success?session_id={CHECKOUT_SESSION_ID}"
    assert settings.checkout_cancel_url == "https://app.prognetwork.com/billing/canceled"
    assert settings.portal_return_url == "https://app.prognetwork.com/billing"


def test_plans_are_configured_as_json_and_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("BILLING_PLANS", '[{"name": "free", "seats": 1}, '
                       '{"name": "team", "price_id": "price_1Team", "seats": 10, "features": ["events", "sso"]}]')
    catalogue = BillingSettings(SECRETS_DIR=str(tmp_path)).catalogue
    assert catalogue.priced("price_1Team").name == "team" and catalogue.free.seats == 1
    for broken, reason in [
        ('[{"name": "team", "price_id": "price_1Team", "seats": 10}]', "'free' without a price id is required"),
        ('[{"name": "free", "seats": 1}, {"name": "team", "seats": 10}]', "every plan but 'free' needs a price id"),
        ('[{"name": "free", "seats": 1}, {"name": "a", "price_id": "price_1", "seats": 2},'
         ' {"name": "b", "price_id": "price_1", "seats": 3}]', "two plans share a price id"),
    ]:
        monkeypatch.setenv("BILLING_PLANS", broken)
        with pytest.raises(ValueError, match=reason):
            BillingSettings(SECRETS_DIR=str(tmp_path))


def test_staging_may_use_stripe_test_mode_but_not_something_else(tmp_path):
    env = production(tmp_path, STRIPE_SECRET_KEY="sk_test_51Hc8Rd1Tg4Yb6Ne9Ua3Jp7Ks2Vn5",
                     STRIPE_WEBHOOK_SECRET="whsec_Jp7Ks2Vn5Hc8Rd1Tg4Yb")
    assert BillingSettings(**{**env, "PROG_ENV": "staging"}).own_problems() == []
    (tmp_path / "secrets" / "STRIPE_SECRET_KEY").write_text("pk_test_51Hc8Rd1Tg4Yb6Ne9Ua3Jp7Ks2Vn5")
    assert BillingSettings(**{**env, "PROG_ENV": "staging", "SECRETS_CACHE_TTL_SECONDS": "0"}).own_problems() == [
        "STRIPE_SECRET_KEY must be a Stripe secret or restricted key (sk_… or rk_…) in staging"]
