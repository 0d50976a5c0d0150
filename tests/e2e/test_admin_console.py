"""The admin console as a person uses it: a real browser (Debian's chromium under Playwright) in
front of the console and the whole platform as processes, with Prometheus scraping them.

Each page's screenshot is kept under this run's temporary folder (`screenshots/`, named in the
output); scripts/screenshot-admin.py makes the README's picture the same way.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.helpers.accounts import unique_email
from tests.helpers.browser import DESKTOP, PHONE, axe_violations, describe, launch, screenshot, with_axe
from tests.helpers.console import (
    PASSWORD,
    Stack,
    api_login,
    create_account,
    stack_env,
    start_prometheus,
    start_stack,
)
from tests.helpers.polling import eventually
from tests.helpers.ports import free_port
from tests.helpers.tokens import bearer

pytestmark = pytest.mark.e2e
PAGES = ("/users", "/tenants", "/events", "/emails", "/audit", "/status")


@dataclass
class Platform:
    stack: Stack
    admin: str
    operator: str
    user: str  # a plain user: no platform role
    target: str  # the account the admin acts on
    target_id: str
    registrant: str  # registered, never verified: has a verification email
    tenant: str  # the target's tenant's name
    tenant_id: str
    shots: Path

    @property
    def console(self) -> str:
        return self.stack.console


@pytest.fixture(scope="module")
def platform(database_url, redis_url, signing_key, tmp_path_factory) -> Iterator[Platform]:
    directory = tmp_path_factory.mktemp("admin-console")
    env = stack_env(database_url, redis_url, signing_key, directory)
    prometheus_port = free_port()
    stack = start_stack(env, directory, console_env={
        "PROMETHEUS_URL": f"http://127.0.0.1:{prometheus_port}", "ADMIN_HEALTH_WINDOW_SECONDS": "60"})
    prometheus = None
    try:
        targets = {name: p.ops_url.removeprefix("http://") for name, p in stack.processes.items()}
        prometheus = start_prometheus(prometheus_port, targets, directory / "prometheus")
        admin, operator, user, target = (unique_email(p) for p in ("admin", "operator", "plain", "target"))
        create_account(env, admin, "admin", name="Ada Admin")
        create_account(env, operator, "operator", name="Otto Operator")
        create_account(env, user, "user", name="Pat Plain")
        target_id = create_account(env, target, "user", name="Tess Target")
        # The target is signed in somewhere and owns a tenant.
        tokens = api_login(stack.gateway, target).json()
        tenant = f"Analytical Engines {uuid.uuid4().hex[:6]}"
        created = httpx.post(f"{stack.gateway}/api/v1/tenants", json={"name": tenant},
                             headers=bearer(tokens["access_token"]), timeout=10)
        assert created.status_code == 201, created.text
        registrant = unique_email("registrant")
        registered = httpx.post(f"{stack.gateway}/api/v1/auth/register", timeout=10,
                                json={"email": registrant, "password": PASSWORD, "name": "Reggie"})
        assert registered.status_code == 202, registered.text
        shots = directory / "screenshots"
        print(f"\nadmin console screenshots: {shots}")
        yield Platform(stack, admin, operator, user, target, target_id, registrant, tenant, created.json()["id"], shots)
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page: Page, console: str, email: str) -> None:
    page.goto(f"{console}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def signed_in(page: Page, console: str, email: str) -> Page:
    sign_in(page, console, email)
    expect(page).to_have_url(f"{console}/users")
    return page


def test_a_plain_user_is_refused_with_a_clear_message(platform, page):
    page.goto(f"{platform.console}/login")
    screenshot(page, platform.shots, "sign-in")
    sign_in(page, platform.console, platform.user)
    expect(page.get_by_role("alert")).to_contain_text("only for platform administrators and operators")
    expect(page).to_have_url(f"{platform.console}/login")
    assert not [c for c in page.context.cookies() if c["name"] == "prog_admin"]
    screenshot(page, platform.shots, "sign-in-refused")


def test_the_navigation_names_every_page(platform, page):
    signed_in(page, platform.console, platform.operator)
    nav = page.get_by_role("navigation", name="Main")
    for name, path in zip(("Users", "Tenants", "Events", "Emails", "Audit log", "Health"), PAGES, strict=True):
        nav.get_by_role("link", name=name, exact=True).click()
        expect(page).to_have_url(re.compile(re.escape(platform.console + path) + r"(\?.*)?$"))
        expect(page.get_by_role("heading", level=1)).to_have_text(name)


def test_an_admin_disables_a_user_who_then_cannot_sign_in_and_sees_it_live_and_audited(platform, browser):
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = signed_in(context.new_page(), platform.console, platform.admin)
        screenshot(page, platform.shots, "users")
        # The Events page is open in another tab, tailing the log live.
        events = context.new_page()
        events.goto(f"{platform.console}/events")
        expect(events.locator("#live-status")).to_have_attribute("data-state", "open")

        # Find the user (the search runs as you type), open their page: active, one session, a tenant.
        page.get_by_label("Email or name").fill(platform.target.split("@")[0])
        expect(page.locator("#results tbody tr")).to_have_count(1)
        page.get_by_role("link", name=platform.target).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(platform.target)
        expect(page.locator("#user-status")).to_have_text("active")
        expect(page.get_by_role("region", name="Sessions of this user").locator("tbody tr")).to_have_count(1)
        expect(page.get_by_role("link", name=platform.tenant)).to_be_visible()
        screenshot(page, platform.shots, "user")

        # Disable, confirmed on a page of its own.
        page.get_by_role("link", name="Disable", exact=True).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(f"Disable {platform.target}?")
        screenshot(page, platform.shots, "confirm")
        page.get_by_role("button", name="Disable", exact=True).click()
        expect(page.get_by_role("status").first).to_contain_text(f"{platform.target} is disabled")
        expect(page.locator("#user-status")).to_have_text("disabled")
        expect(page.locator("#no-sessions")).to_be_visible()
        expect(page.get_by_role("link", name="Enable", exact=True)).to_be_visible()

        # Their next login is refused, and so is the token their old session held.
        refused = api_login(platform.stack.gateway, platform.target)
        assert refused.status_code == 403 and "disabled" in refused.json()["detail"]

        # The event arrived on the Events page without a reload.
        live = events.locator("#event-rows tr[data-type='user.disabled']")
        expect(live.first).to_be_visible()
        expect(live.first).to_contain_text(platform.target_id[:8])
        screenshot(events, platform.shots, "events")

        # The audit log has the action, by whom, on whom; the chain verifies.
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
        page.get_by_label("Action").fill("user.disabled")
        page.get_by_label("Target").fill(platform.target_id)
        page.get_by_role("button", name="Filter").click()
        row = page.locator("tbody tr").first
        expect(row).to_contain_text("user.disabled")
        expect(row).to_contain_text(platform.admin)
        expect(row).to_contain_text(platform.target)
        expect(page.locator("#chain")).to_contain_text("Chain verified")
        screenshot(page, platform.shots, "audit")
    finally:
        context.close()


def stream_subscribers(platform: Platform) -> float:
    text = httpx.get(platform.stack["event-streaming"].ops_url + "/metrics", timeout=5).text
    found = re.search(r"^stream_subscribers (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_closing_the_events_page_closes_its_stream_upstream(platform, browser):
    before = stream_subscribers(platform)
    context = browser.new_context(viewport=DESKTOP)
    page = signed_in(context.new_page(), platform.console, platform.operator)
    page.goto(f"{platform.console}/events")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
    eventually(lambda: stream_subscribers(platform) == before + 1, what="the relayed stream to subscribe")
    context.close()
    eventually(lambda: stream_subscribers(platform) == before, what="the upstream stream to close")


def test_an_operator_finds_the_actions_absent_and_refused(platform, page):
    signed_in(page, platform.console, platform.operator)
    expect(page.get_by_text("read-only")).to_be_visible()
    page.goto(f"{platform.console}/users/{platform.target_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(platform.target)
    for name in ("Disable", "Enable", "Revoke all sessions", "Resend verification email"):
        expect(page.get_by_role("link", name=name, exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Change role")).to_have_count(0)
    screenshot(page, platform.shots, "user-as-operator")
    # Typing the confirmation's address does not help either.
    page.goto(f"{platform.console}/users/{platform.target_id}/confirm/enable")
    expect(page.get_by_role("alert")).to_contain_text("only an admin may act")


def test_an_emails_state_attempts_and_recipient_filter(platform, page):
    signed_in(page, platform.console, platform.operator)

    def delivered() -> bool:
        page.goto(f"{platform.console}/emails?recipient={platform.registrant}")
        return page.locator("tbody tr").count() == 1 and "sent" in page.locator("tbody tr").inner_text()

    eventually(delivered, timeout=30, interval=0.5, what="the verification email to be sent")
    row = page.locator("tbody tr")
    expect(row).to_contain_text(platform.registrant)
    expect(row.locator(".badge")).to_have_text("sent")
    expect(row.locator("td").nth(4)).to_have_text("1")  # attempts
    screenshot(page, platform.shots, "emails")
    page.get_by_label("State").select_option("failed")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No email matches.")).to_be_visible()


def test_a_tenants_members_and_subscription(platform, page):
    signed_in(page, platform.console, platform.operator)
    page.goto(f"{platform.console}/tenants")
    page.get_by_label("Name").fill(platform.tenant.split()[-1])
    expect(page.locator("#results tbody tr")).to_have_count(1)
    screenshot(page, platform.shots, "tenants")
    page.get_by_role("link", name=platform.tenant).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(platform.tenant)
    members = page.get_by_role("region", name="Members of this tenant")
    expect(members).to_contain_text(platform.target)
    expect(members).to_contain_text("owner")
    expect(page.locator("#subscription")).to_contain_text("free")
    screenshot(page, platform.shots, "tenant")


def test_the_events_page_filters_by_type_and_loads_older_events(platform, page):
    admin = api_login(platform.stack.gateway, platform.admin).json()["access_token"]
    with httpx.Client(base_url=platform.stack.gateway, headers=bearer(admin), timeout=10) as api:
        for n in range(60):  # more than a page of one custom type
            published = api.post("/api/v1/events", json={"type": "app.console_test", "payload": {"n": n}},
                                 headers={"Idempotency-Key": uuid.uuid4().hex})
            assert published.status_code == 201, published.text
    signed_in(page, platform.console, platform.operator)
    page.goto(f"{platform.console}/events")
    page.get_by_label("Event types").fill("app.console_test")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("#event-rows tr")
    expect(rows).to_have_count(50)
    assert {rows.nth(i).get_attribute("data-type") for i in range(50)} == {"app.console_test"}
    oldest_shown = int(rows.last.locator("td").first.inner_text())
    page.get_by_role("link", name="Load older").click()
    expect(rows).to_have_count(60)
    seqs = [int(t) for t in page.locator("#event-rows tr td:first-child").all_inner_texts()]
    assert seqs == sorted(seqs, reverse=True) and min(seqs) < oldest_shown
    expect(page.get_by_role("link", name="Load older")).to_have_count(0)  # nothing older of that type


def test_the_health_page_shows_every_service_ready_with_its_traffic(platform, page):
    signed_in(page, platform.console, platform.operator)

    def charted() -> bool:
        page.goto(f"{platform.console}/status")
        return page.locator("#service-api-gateway svg.spark").count() >= 1

    eventually(charted, timeout=60, interval=1.0, what="Prometheus to have a minute of the gateway's traffic")
    expect(page.locator("#summary")).to_have_text(f"All {len(platform.stack.processes)} services are ready.")
    for name in platform.stack.processes:
        expect(page.locator(f"#service-{name} .badge")).to_have_text("ready")
    screenshot(page, platform.shots, "health")


def test_main_pages_have_no_critical_accessibility_violations_and_fit_a_phone(platform, browser):
    found = {}
    for viewport, suffix in ((DESKTOP, ""), (PHONE, "-phone")):
        context = browser.new_context(viewport=viewport)
        with_axe(context)
        try:
            page = context.new_page()
            page.goto(f"{platform.console}/login")
            found[f"/login{suffix}"] = axe_violations(page)
            signed_in(page, platform.console, platform.admin)
            for path in (*PAGES, f"/users/{platform.target_id}", f"/tenants/{platform.tenant_id}",
                         f"/users/{platform.target_id}/confirm/revoke-sessions"):
                page.goto(platform.console + path)
                found[path + suffix] = axe_violations(page)
                if viewport is PHONE:
                    # Readable at phone width: nothing but a table's own scroller is wider than the screen.
                    overflow = page.evaluate("document.documentElement.scrollWidth")
                    assert overflow <= PHONE["width"], f"{path} is {overflow}px wide at {PHONE['width']}px"
            screenshot(page, platform.shots, "confirm-phone")
            page.goto(f"{platform.console}/users/{platform.target_id}")
            screenshot(page, platform.shots, "user-phone")
        finally:
            context.close()
    assert not {path: v for path, v in found.items() if v}, describe([v for vs in found.values() for v in vs])


def test_sign_in_and_a_search_work_from_the_keyboard_alone(platform, page):
    page.goto(f"{platform.console}/login")
    focused = []
    while not focused or focused[-1] != "email":  # the skip link and the home link come first
        assert len(focused) < 5, f"Tab never reached the Email field: {focused}"
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.textContent"))
    page.keyboard.type(platform.operator)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{platform.console}/users")
    page.get_by_label("Email or name").focus()
    page.keyboard.type(platform.target)
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name=platform.target)).to_be_visible()
    page.get_by_role("link", name=platform.target).focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text(platform.target)


def test_signing_out_returns_to_the_sign_in_page_and_ends_the_session(platform, page):
    signed_in(page, platform.console, platform.operator)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("You have signed out.")
    page.goto(f"{platform.console}/users")
    expect(page).to_have_url(re.compile(re.escape(f"{platform.console}/login?next=/users")))


def test_when_billing_stops_the_tenant_page_says_not_available_and_health_names_it(platform, page):
    platform.stack["billing-service"].stop()
    signed_in(page, platform.console, platform.operator)
    page.goto(f"{platform.console}/tenants/{platform.tenant_id}")
    expect(page.locator("#subscription")).to_contain_text("Not available")
    expect(page.get_by_role("region", name="Members of this tenant")).to_contain_text(platform.target)
    screenshot(page, platform.shots, "tenant-billing-down")
    page.goto(f"{platform.console}/status")
    expect(page.locator("#summary")).to_contain_text("not ready: billing-service")
    expect(page.locator("#service-billing-service .badge")).to_have_text("unreachable")
    screenshot(page, platform.shots, "health-billing-down")
    print(json.dumps(sorted(p.name for p in platform.shots.glob("*.png"))))
