"""The admin console's defences, against the real platform: CSRF, cookies, headers, who gets in.

The user service, the gateway and the console run as processes (the console signs in through the
gateway as a browser's user would); one test builds the console in-process in staging to see the
attributes only a non-development console sets.
"""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis as redis_sync

from tests.helpers.accounts import unique_email
from tests.helpers.console import (
    api_login,
    console_client,
    create_account,
    csrf_of,
    sign_in,
    stack_env,
    start_stack,
)
from tests.helpers.tokens import bearer

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


@pytest.fixture(scope="module")
def stack(database_url, redis_url, signing_key, tmp_path_factory):
    directory = tmp_path_factory.mktemp("console-security")
    # Access tokens of 30 s: the console refreshes before each of its calls, so every test here
    # also goes through the refresh path.
    env = {**stack_env(database_url, redis_url, signing_key, directory), "ACCESS_TOKEN_TTL_SECONDS": "30"}
    running = start_stack(env, directory, behind=())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def accounts(stack) -> dict[str, tuple[str, str]]:
    """role → (email, id) of an account with that platform role."""
    found = {}
    for role in ("admin", "operator", "user"):
        email = unique_email(f"console-{role}")
        found[role] = (email, create_account(stack.env, email, role))
    return found


@pytest.fixture
def admin(stack, accounts):
    client = console_client(stack.console)
    assert sign_in(client, accounts["admin"][0]).status_code == 303
    yield client
    client.close()


def set_cookie_header(response: httpx.Response, name: str) -> str:
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert found, f"no {name} cookie set: {response.headers.get_list('set-cookie')}"
    return found[-1]


def attributes(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(";")[1:]}


def test_the_session_cookie_is_httponly_samesite_strict_and_not_readable_in_redis(stack, accounts, redis_url):
    client = console_client(stack.console)
    response = sign_in(client, accounts["admin"][0])
    assert response.status_code == 303 and response.headers["location"] == "/users"
    cookie = set_cookie_header(response, "prog_admin")
    assert {"httponly", "samesite=strict", "path=/"} <= attributes(cookie)
    assert "secure" not in attributes(cookie)  # development serves plain http
    assert not any(a.startswith(("max-age", "expires")) for a in attributes(cookie)), "a browser-session cookie"
    value = client.cookies["prog_admin"]
    # Redis keys the session by a hash of the cookie, with an idle expiry; the value is nowhere.
    store = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    key = "admin:session:" + hashlib.sha256(value.encode()).hexdigest()
    assert 0 < store.ttl(key) <= 1800
    assert not any(value in k for k in store.scan_iter("admin:*"))
    assert accounts["admin"][0] in client.get("/users").text


async def test_a_non_development_console_marks_its_cookies_secure_and_sends_hsts(make_settings, serve_app, stack):
    from prognetwork.admin.app import create_app

    settings = make_settings("admin-client", PROG_ENV="staging", API_GATEWAY_URL=stack.gateway,
                             JWKS_URL=f"{stack['user-service'].url}/.well-known/jwks.json")
    client = await serve_app(create_app(settings))
    page = await client.get("/login")
    assert page.status_code == 200
    assert {"secure", "httponly", "samesite=strict"} <= attributes(set_cookie_header(page, "prog_admin_login"))
    assert page.headers["strict-transport-security"].startswith("max-age=")


def test_every_page_carries_a_strict_content_security_policy(stack, admin):
    for path in ("/login", "/users", "/events", "/static/console.css", "/no/such/page"):
        response = admin.get(path)
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert admin.get("/users").headers["cache-control"] == "no-store"


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_signing_in_without_the_forms_csrf_token_is_refused(stack, accounts, token):
    client = console_client(stack.console)
    client.get("/login")  # the form's cookie is there; the form's field is missing or wrong
    form = {"email": accounts["admin"][0], "password": "correct horse battery staple"}
    if token is not None:
        form["csrf_token"] = token
    response = client.post("/login", data=form)
    assert response.status_code == 403
    assert "prog_admin" not in client.cookies


def test_a_cross_site_post_is_refused_even_with_the_right_token(stack, accounts):
    client = console_client(stack.console)
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", headers={"Sec-Fetch-Site": "cross-site"}, data={
        "csrf_token": token, "email": accounts["admin"][0], "password": "correct horse battery staple"})
    assert response.status_code == 403
    assert "prog_admin" not in client.cookies


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_an_action_without_the_sessions_csrf_token_is_refused_and_changes_nothing(stack, accounts, admin, token):
    email, user_id = unique_email("csrf-target"), None
    user_id = create_account(stack.env, email, "user")
    form = {"csrf_token": token} if token is not None else {}
    response = admin.post(f"/users/{user_id}/disable", data=form)
    assert response.status_code == 403
    assert "Reload the page" in response.text
    assert api_login(stack.gateway, email).status_code == 200  # still enabled


def test_the_csrf_token_is_accepted_from_the_htmx_header(stack, admin):
    user_id = create_account(stack.env, unique_email("header-target"), "user")
    token = csrf_of(admin.get(f"/users/{user_id}/confirm/revoke-sessions").text)
    response = admin.post(f"/users/{user_id}/revoke-sessions", headers={"X-CSRF-Token": token})
    assert response.status_code == 303, response.text


def sessions_of(stack, who: str, token: str) -> list[str]:
    detail = httpx.get(f"{stack.gateway}/api/v1/admin/users/{who}", headers=bearer(token), timeout=10)
    assert detail.status_code == 200, detail.text
    return [s["session_id"] for s in detail.json()["sessions"]]


def test_signing_out_needs_the_csrf_token_and_ends_the_session(stack, accounts, admin):
    assert admin.post("/logout").status_code == 403
    assert admin.get("/users").status_code == 200
    watcher = api_login(stack.gateway, accounts["admin"][0]).json()["access_token"]
    before = sessions_of(stack, accounts["admin"][1], watcher)
    response = admin.post("/logout", data={"csrf_token": csrf_of(admin.get("/users").text)})
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    assert admin.get("/users").status_code == 303  # to the sign-in page
    # Its refresh token was revoked through the API: the user service has one session fewer.
    after = sessions_of(stack, accounts["admin"][1], watcher)
    assert len(after) == len(before) - 1 and set(after) < set(before)


def test_a_plain_user_is_refused_and_left_without_a_session(stack, accounts):
    client = console_client(stack.console)
    response = sign_in(client, accounts["user"][0])
    assert response.status_code == 403
    assert "only for platform administrators and operators" in response.text
    assert "prog_admin" not in client.cookies
    watcher = api_login(stack.gateway, accounts["admin"][0]).json()["access_token"]
    assert sessions_of(stack, accounts["user"][1], watcher) == []  # its sign-in's session ended at once


def test_an_operator_may_look_but_every_action_is_refused(stack, accounts):
    client = console_client(stack.console)
    assert sign_in(client, accounts["operator"][0]).status_code == 303
    target = accounts["user"][1]
    page = client.get(f"/users/{target}")
    assert page.status_code == 200 and "Disable" not in page.text and "Actions" not in page.text
    token = csrf_of(page.text)  # the sign-out form's: a valid token of this session
    assert client.get(f"/users/{target}/confirm/disable").status_code == 403
    for action in ("disable", "revoke-sessions", "resend-verification", "enable"):
        assert client.post(f"/users/{target}/{action}", data={"csrf_token": token}).status_code == 403, action
    assert client.post(f"/users/{target}/role", data={"csrf_token": token, "role": "admin"}).status_code == 403


def test_a_forged_session_cookie_is_sent_to_sign_in(stack):
    client = console_client(stack.console)
    client.cookies.set("prog_admin", "not-a-session")
    response = client.get("/users/" + str(uuid.uuid4()))
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=/users/")


def test_a_user_cannot_reach_the_admin_api_directly_or_through_the_gateway(stack, accounts):
    tokens = api_login(stack.gateway, accounts["user"][0]).json()
    users = stack["user-service"].url
    for url in (f"{stack.gateway}/api/v1/admin/users", f"{users}/v1/admin/users",
                f"{stack.gateway}/api/v1/admin/tenants", f"{users}/v1/admin/users/{accounts['admin'][1]}"):
        assert httpx.get(url, headers=bearer(tokens["access_token"]), timeout=10).status_code == 403, url
        assert httpx.get(url, timeout=10).status_code == 401, url
    disable = f"{stack.gateway}/api/v1/admin/users/{accounts['admin'][1]}/disable"
    assert httpx.post(disable, headers=bearer(tokens["access_token"]), timeout=10).status_code == 403
    operator = api_login(stack.gateway, accounts["operator"][0]).json()
    assert httpx.post(disable, headers=bearer(operator["access_token"]), timeout=10).status_code == 403


def test_concurrent_pages_of_one_session_refresh_its_tokens_once_each_and_stay_signed_in(stack, accounts, redis_url):
    client = console_client(stack.console)
    assert sign_in(client, accounts["operator"][0]).status_code == 303
    store = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    key = "admin:session:" + hashlib.sha256(client.cookies["prog_admin"].encode()).hexdigest()
    first = store.get(key)
    cookies = dict(client.cookies)

    def load(path: str) -> int:
        with httpx.Client(base_url=stack.console, cookies=cookies, timeout=30) as browser_tab:
            return browser_tab.get(path).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(load, ["/users", "/tenants", "/audit", f"/users/{accounts['user'][1]}"] * 2))
    assert statuses == [200] * 8
    # The pair was refreshed (never one refresh token twice: that would have ended the session).
    assert store.get(key) != first
    assert client.get("/users").status_code == 200


def test_an_admin_disabled_elsewhere_is_signed_out_of_the_console_at_the_next_request(stack, accounts):
    email = unique_email("console-admin-2")
    other = create_account(stack.env, email, "admin")
    client = console_client(stack.console)
    assert sign_in(client, email).status_code == 303
    assert client.get("/users").status_code == 200
    token = api_login(stack.gateway, accounts["admin"][0]).json()["access_token"]
    disabled = httpx.post(f"{stack.gateway}/api/v1/admin/users/{other}/disable", headers=bearer(token), timeout=10)
    assert disabled.status_code == 200, disabled.text
    response = client.get("/users")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/users&ended=expired"
    assert "prog_admin" not in client.cookies  # told to forget it
    assert "Your session ended" in client.get(response.headers["location"]).text
