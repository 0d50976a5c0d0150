"""The platform admin API (`/v1/admin/…`) in the services that own what it shows, against real
PostgreSQL and Redis: who may read and who may act, searching and paging accounts, disabling,
signing out, roles and the last admin, verification links, tenants across tenants, emails in every
state, and any tenant's subscription. Every change is audited."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from prognetwork.kit.revocation import Revocations
from prognetwork.notifications import service as email_service
from prognetwork.notifications.email import DeliveryError, OutboxProvider
from prognetwork.notifications.models import EmailMessage
from tests.helpers.accounts import PASSWORD, login, register, unique_email, verification_token
from tests.helpers.platform import audit_records, event_types, only_admin, with_role
from tests.helpers.polling import eventually_async
from tests.helpers.problems import assert_problem
from tests.helpers.tenants import another_session, claims_of, create_tenant, join, person, switch, unique_name
from tests.helpers.tokens import bearer, mint


def reads(user_id: uuid.UUID, tenant_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/v1/admin/users", None),
        ("GET", f"/v1/admin/users/{user_id}", None),
        ("GET", "/v1/admin/tenants", None),
        ("GET", f"/v1/admin/tenants/{tenant_id}", None),
    ]


def actions(user_id: uuid.UUID) -> list[tuple[str, str, dict | None]]:
    return [
        ("POST", f"/v1/admin/users/{user_id}/disable", None),
        ("POST", f"/v1/admin/users/{user_id}/enable", None),
        ("POST", f"/v1/admin/users/{user_id}/revoke-sessions", None),
        ("PATCH", f"/v1/admin/users/{user_id}", {"role": "admin"}),
        ("POST", f"/v1/admin/users/{user_id}/resend-verification", None),
    ]


async def call(client, method: str, path: str, body: dict | None, headers: dict | None = None):
    return await client.request(method, path, json=body, headers=headers or {})


async def named_user(users, db, name: str, *, verified: bool = True) -> str:
    email, response = await register(users, unique_email("named"), name=name)
    assert response.status_code == 202, response.text
    if verified:
        token = await verification_token(db, email)
        assert (await users.post("/v1/auth/verify-email", json={"token": token, "password": PASSWORD})).status_code == 200
    return email


async def user_id_of(db, email: str) -> uuid.UUID:
    return await db.fetchval("SELECT id FROM users WHERE email = $1", email.lower())


async def assert_signed_out(users, tokens: dict) -> None:
    body = assert_problem(await users.get("/v1/users/me", headers=bearer(tokens["access_token"])), 401, "invalid-token")
    assert "signed out" in body["detail"]
    assert_problem(await users.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}), 401)


# -- who may call -------------------------------------------------------------------------------------

async def test_admin_routes_need_a_valid_token(users, db):
    target = await person(users, db)
    for method, path, body in [*reads(target.user_id, str(uuid.uuid4())), *actions(target.user_id)]:
        assert_problem(await call(users, method, path, body), 401, "unauthenticated")
        assert_problem(await call(users, method, path, body, {"Authorization": "Bearer not-a-token"}), 401, "invalid-token")


async def test_a_user_is_refused_every_admin_route_with_the_role_it_needs(users, db):
    user = await person(users, db, "plain")
    tenant = await create_tenant(users, user)
    for method, path, body in reads(user.user_id, tenant["id"]):
        problem = assert_problem(await call(users, method, path, body, user.headers), 403, "forbidden")
        assert "platform role admin or operator; yours is user" in problem["detail"], problem
    for method, path, body in actions(user.user_id):
        problem = assert_problem(await call(users, method, path, body, user.headers), 403, "forbidden")
        assert "platform role admin; yours is user" in problem["detail"], problem
    # Not even their own role.
    assert (await db.fetchval("SELECT role FROM users WHERE id = $1", user.user_id)) == "user"


async def test_an_operator_reads_everything_and_changes_nothing(users, db):
    operator = await with_role(users, db, "operator")
    target = await person(users, db, "target")
    tenant = await create_tenant(users, target)
    for method, path, body in reads(target.user_id, tenant["id"]):
        response = await call(users, method, path, body, operator.headers)
        assert response.status_code == 200, (path, response.text)
    for method, path, body in actions(target.user_id):
        problem = assert_problem(await call(users, method, path, body, operator.headers), 403, "forbidden")
        assert "platform role admin; yours is operator" in problem["detail"]
    # The target is as it was: signed in, a user, and nothing was audited.
    assert (await users.get("/v1/users/me", headers=target.headers)).status_code == 200
    assert (await db.fetchval("SELECT role FROM users WHERE id = $1", target.user_id)) == "user"
    assert await audit_records(db, target.user_id, actor_id=operator.user_id) == []


# -- reading accounts ---------------------------------------------------------------------------------

async def test_search_matches_email_or_name_in_any_case_and_pages_by_email(users, db):
    admin = await with_role(users, db, "admin")
    marker = uuid.uuid4().hex[:10]
    emails = sorted([await named_user(users, db, f"Zed {marker}") for _ in range(3)])

    async def search(**params) -> dict:
        response = await users.get("/v1/admin/users", params=params, headers=admin.headers)
        assert response.status_code == 200, response.text
        return response.json()

    first = await search(q=marker.upper(), limit=2)
    assert [u["email"] for u in first["users"]] == emails[:2]
    assert first["next_after"] == emails[1]
    second = await search(q=marker.upper(), limit=2, after=first["next_after"])
    assert [u["email"] for u in second["users"]] == emails[2:] and second["next_after"] is None
    found = first["users"][0]
    assert set(found) == {"id", "email", "name", "role", "status", "created_at", "email_verified_at"}
    assert found["status"] == "active" and found["role"] == "user" and found["email_verified_at"]
    # By part of the address, too.
    assert [u["email"] for u in (await search(q=emails[0].split("@")[0][-8:].upper()))["users"]] == [emails[0]]


async def test_search_takes_percent_and_underscore_literally_and_filters_by_status(users, db):
    admin = await with_role(users, db, "admin")
    marker = uuid.uuid4().hex[:10]
    literal = await named_user(users, db, f"Deal 50%_off {marker}")
    await named_user(users, db, f"Deal 50xyoff {marker}")  # what an unescaped pattern would match too
    pending = await named_user(users, db, f"Pending {marker}", verified=False)
    response = await users.get("/v1/admin/users", params={"q": f"50%_off {marker}"}, headers=admin.headers)
    assert [u["email"] for u in response.json()["users"]] == [literal]
    unverified = await users.get("/v1/admin/users", params={"q": marker, "status": "unverified"}, headers=admin.headers)
    (only,) = unverified.json()["users"]
    assert only["email"] == pending and only["status"] == "unverified" and only["email_verified_at"] is None
    assert_problem(await users.get("/v1/admin/users", params={"status": "sleeping"}, headers=admin.headers), 422)
    assert_problem(await users.get("/v1/admin/users", params={"limit": 101}, headers=admin.headers), 422)
    assert_problem(await users.get("/v1/admin/users", params={"q": "a\x00b"}, headers=admin.headers), 422)


async def test_an_account_shows_its_tenants_sessions_and_recent_public_events(users, db):
    operator = await with_role(users, db, "operator")
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada, unique_name("Acme"))
    laptop = await another_session(users, ada)
    assert (await switch(users, laptop, tenant["id"])).status_code == 200
    response = await users.get(f"/v1/admin/users/{ada.user_id}", headers=operator.headers)
    assert response.status_code == 200, response.text
    detail = response.json()
    assert detail["email"] == ada.email and detail["status"] == "active"
    assert detail["tenants"] == [{"id": tenant["id"], "name": tenant["name"], "role": "owner"}]
    sessions = {s["session_id"]: s["tenant_id"] for s in detail["sessions"]}
    assert sessions == {ada.claims["sid"]: None, laptop.claims["sid"]: tenant["id"]}
    types = [e["type"] for e in detail["recent_events"]]
    assert types[0] == "tenant.switched" and {"user.logged_in", "user.email_verified", "tenant.created"} <= set(types)
    # The verification request carried a one-time token: private, never shown.
    assert "user.email_verification_requested" not in types
    assert "token" not in json.dumps(detail["recent_events"])
    seqs = [e["seq"] for e in detail["recent_events"]]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) <= 20
    assert_problem(await users.get(f"/v1/admin/users/{uuid.uuid4()}", headers=operator.headers), 404, "unknown-user")
    assert_problem(await users.get("/v1/admin/users/not-an-id", headers=operator.headers), 422)


# -- changing accounts ---------------------------------------------------------------------------------

async def test_disabling_refuses_login_and_the_token_then_enabling_restores(users, db):
    admin = await with_role(users, db, "admin")
    target = await person(users, db, "target")
    disabled = await users.post(f"/v1/admin/users/{target.user_id}/disable", headers={
        **admin.headers, "X-Request-ID": "disable-req-1"})
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["status"] == "disabled"
    await assert_signed_out(users, target.tokens)
    assert_problem(await login(users, target.email), 403, "account-disabled")
    (record,) = await audit_records(db, target.user_id, "user.disabled")
    assert (record["actor_id"], record["actor_label"], record["actor_role"]) == (admin.user_id, admin.email, "admin")
    assert record["target_type"] == "user" and record["outcome"] == "success"
    assert record["client_ip"] == "127.0.0.1" and record["request_id"] == "disable-req-1"
    assert record["details"]["sessions_ended"] == 1

    # Disabling again changes nothing and records nothing.
    assert (await users.post(f"/v1/admin/users/{target.user_id}/disable", headers=admin.headers)).status_code == 200
    assert len(await audit_records(db, target.user_id, "user.disabled")) == 1

    enabled = await users.post(f"/v1/admin/users/{target.user_id}/enable", headers=admin.headers)
    assert enabled.status_code == 200 and enabled.json()["status"] == "active"
    assert (await login(users, target.email)).status_code == 200
    assert (await event_types(db, target.user_id))[-3:] == ["user.disabled", "user.enabled", "user.logged_in"]
    assert [r["action"] for r in await audit_records(db, target.user_id, actor_id=admin.user_id)] == [
        "user.disabled", "user.enabled"]


async def test_revoking_sessions_signs_the_account_out_everywhere(users, db):
    admin = await with_role(users, db, "admin")
    phone = await person(users, db, "target")
    laptop = await another_session(users, phone)
    response = await users.post(f"/v1/admin/users/{phone.user_id}/revoke-sessions", headers=admin.headers)
    assert response.status_code == 200 and response.json() == {"sessions_ended": 2}
    await assert_signed_out(users, phone.tokens)
    await assert_signed_out(users, laptop.tokens)
    detail = (await users.get(f"/v1/admin/users/{phone.user_id}", headers=admin.headers)).json()
    assert detail["sessions"] == []
    assert (await login(users, phone.email)).status_code == 200  # signed out, not locked out
    (record,) = await audit_records(db, phone.user_id, "user.sessions_revoked")
    assert record["details"]["sessions_ended"] == 2 and record["actor_label"] == admin.email


async def test_a_role_change_signs_out_and_the_next_login_carries_the_role(users, db):
    admin = await with_role(users, db, "admin")
    target = await person(users, db, "target")
    assert_problem(await users.get("/v1/admin/users", headers=target.headers), 403, "forbidden")
    changed = await users.patch(f"/v1/admin/users/{target.user_id}", json={"role": "operator"}, headers=admin.headers)
    assert changed.status_code == 200, changed.text
    assert changed.json()["role"] == "operator"
    await assert_signed_out(users, target.tokens)
    tokens = (await login(users, target.email)).json()
    assert claims_of(tokens)["role"] == "operator"
    assert (await users.get("/v1/admin/users", headers=bearer(tokens["access_token"]))).status_code == 200
    (event,) = [json.loads(r["payload"]) for r in await db.fetch(
        "SELECT payload FROM events WHERE user_id = $1 AND type = 'user.role_changed'", target.user_id)]
    assert event == {"user_id": str(target.user_id), "role": "operator", "previous_role": "user",
                     "changed_by": str(admin.user_id), "sessions_ended": 1}
    (record,) = await audit_records(db, target.user_id, "user.role_changed")
    assert record["details"]["role"] == "operator" and record["details"]["previous_role"] == "user"
    for body in ({"role": "superuser"}, {"role": "admin", "extra": 1}, {}):
        assert_problem(await users.patch(f"/v1/admin/users/{target.user_id}", json=body, headers=admin.headers), 422)
    assert_problem(await users.patch(f"/v1/admin/users/{uuid.uuid4()}", json={"role": "user"}, headers=admin.headers),
                   404, "unknown-user")


async def test_the_last_enabled_admin_can_neither_step_down_nor_be_disabled(users, db):
    admin = await with_role(users, db, "admin")
    await only_admin(db, admin)
    for response in (
        await users.patch(f"/v1/admin/users/{admin.user_id}", json={"role": "operator"}, headers=admin.headers),
        await users.post(f"/v1/admin/users/{admin.user_id}/disable", headers=admin.headers),
    ):
        problem = assert_problem(response, 409, "last-admin")
        assert "make another account an admin first" in problem["detail"]
    assert (await users.get("/v1/users/me", headers=admin.headers)).json()["role"] == "admin"
    refused = {"user.role_changed", "user.disabled"}
    assert [r for r in await audit_records(db, admin.user_id) if r["action"] in refused] == []
    # With a second admin, stepping down is allowed.
    second = await person(users, db, "second")
    promoted = await users.patch(f"/v1/admin/users/{second.user_id}", json={"role": "admin"}, headers=admin.headers)
    assert promoted.status_code == 200
    stepped_down = await users.patch(f"/v1/admin/users/{admin.user_id}", json={"role": "user"}, headers=admin.headers)
    assert stepped_down.status_code == 200 and stepped_down.json()["role"] == "user"


async def test_two_admins_demoting_each_other_at_once_leave_one_admin(users, db, users_settings):
    from prognetwork.kit.audit import Actor
    from prognetwork.kit.problems import Problem
    from prognetwork.users.admin import open_accounts
    from prognetwork.users.admin_service import PlatformAdmin

    ada = await with_role(users, db, "admin", "ada")
    bob = await with_role(users, db, "admin", "bob")
    await db.execute("UPDATE users SET role = 'user' WHERE role = 'admin' AND id <> ALL($1::uuid[])",
                     [ada.user_id, bob.user_id])

    async def demote(actor, target):
        # Each on its own connection, as two requests on two replicas would be.
        async with open_accounts(users_settings) as (accounts, session):
            return await PlatformAdmin(accounts).set_role(
                session, Actor(actor.user_id, actor.email, "admin"), target.user_id, "user")

    results = await asyncio.gather(demote(ada, bob), demote(bob, ada), return_exceptions=True)
    refused = [r for r in results if isinstance(r, Problem)]
    assert len(refused) == 1 and refused[0].kind == "last-admin", results
    assert await db.fetchval("SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL") == 1


async def test_resending_verification_voids_the_old_link_and_keeps_to_the_hourly_limit(users, db, users_settings):
    admin = await with_role(users, db, "admin")
    email = await named_user(users, db, "Pending", verified=False)
    user_id = await user_id_of(db, email)
    old_token = await verification_token(db, email)
    resent = await users.post(f"/v1/admin/users/{user_id}/resend-verification", headers=admin.headers)
    assert resent.status_code == 202, resent.text
    assert email in resent.json()["detail"]
    new_token = await verification_token(db, email)
    assert new_token != old_token
    stale = await users.post("/v1/auth/verify-email", json={"token": old_token, "password": PASSWORD})
    assert_problem(stale, 400, "invalid-verification-link")
    (record,) = await audit_records(db, user_id, "user.verification_resent")
    assert "token" not in json.dumps(record["details"])
    # Registration sent one email and this one more: the rest of the hour's allowance, then 429.
    for _ in range(users_settings.emails_per_address_per_hour - 2):
        assert (await users.post(f"/v1/admin/users/{user_id}/resend-verification", headers=admin.headers)).status_code == 202
    refused = await users.post(f"/v1/admin/users/{user_id}/resend-verification", headers=admin.headers)
    assert_problem(refused, 429, "too-many-emails")
    latest = await verification_token(db, email)
    assert (await users.post("/v1/auth/verify-email", json={"token": latest, "password": PASSWORD})).status_code == 200
    # Verified now: nothing to resend.
    again = await users.post(f"/v1/admin/users/{user_id}/resend-verification", headers=admin.headers)
    assert_problem(again, 409, "already-verified")


# -- tenants, across tenants ------------------------------------------------------------------------------

async def test_tenants_are_read_across_tenants_with_members_plan_and_seats(users, db):
    operator = await with_role(users, db, "operator")
    marker = uuid.uuid4().hex[:8]
    ada, carl = await person(users, db, "ada"), await person(users, db, "carl")
    first = await create_tenant(users, ada, f"Alpha {marker}")
    second = await create_tenant(users, carl, f"Beta {marker}")
    bob = await join(users, db, ada, first["id"], "admin", "bob")
    await db.execute("UPDATE tenants SET plan = 'pro', seats = 20 WHERE id = $1", uuid.UUID(second["id"]))

    page = (await users.get("/v1/admin/tenants", params={"q": marker.upper(), "limit": 1}, headers=operator.headers)).json()
    (alpha,) = page["tenants"]
    assert alpha == {"id": first["id"], "name": first["name"], "slug": first["slug"], "plan": "free", "seats": 3,
                     "member_count": 2, "created_at": alpha["created_at"]}
    assert page["next_after"] == first["slug"]
    rest = (await users.get("/v1/admin/tenants", params={"q": marker, "after": page["next_after"]},
                            headers=operator.headers)).json()
    assert [(t["id"], t["plan"], t["seats"], t["member_count"]) for t in rest["tenants"]] == [(second["id"], "pro", 20, 1)]
    assert rest["next_after"] is None

    detail = (await users.get(f"/v1/admin/tenants/{first['id']}", headers=operator.headers)).json()
    assert detail["member_count"] == 2 and detail["plan"] == "free"
    assert [(m["email"], m["role"]) for m in detail["members"]] == [(ada.email, "owner"), (bob.email, "admin")]
    assert_problem(await users.get(f"/v1/admin/tenants/{uuid.uuid4()}", headers=operator.headers), 404, "tenant-not-found")
    # The operator is a member of neither, and still is not: reading joined nothing.
    assert (await users.get("/v1/tenants", headers=operator.headers)).json() == []


# -- emails (the notification service) ------------------------------------------------------------------


@pytest.fixture
async def admin_notifications(serve_app, make_settings, jwks_server):
    from prognetwork.notifications.app import create_app

    settings = make_settings("notification-service", JWKS_URL=jwks_server.url + "/.well-known/jwks.json")
    return await serve_app(create_app(settings))


class ScriptedProvider:
    """Fails the recipients it is told to, and delivers everyone else's mail to the outbox (as the
    development provider would have)."""

    name = "scripted"

    def __init__(self, failures: dict[str, DeliveryError]) -> None:
        self.failures = failures

    async def send(self, session, message, sender) -> str:
        failure = self.failures.get(message.recipient)
        if failure is not None:
            raise failure
        return await OutboxProvider().send(session, message, sender)


async def staged(sessions, recipient: str, kind: str = "verify-email") -> uuid.UUID:
    message_id = uuid.uuid4()
    async with sessions() as session, session.begin():
        session.add(EmailMessage(id=message_id, event_id=uuid.uuid4(), kind=kind, recipient=recipient,
                                 subject=f"About {kind}", text="plain", html="<p>html</p>"))
    return message_id


async def test_emails_are_listed_in_every_state_newest_first(sessions, notification_settings, db, signing_key,
                                                             serve_app, make_settings, jwks_server):
    sent_to, failing, retrying = unique_email("sent"), unique_email("bounce"), unique_email("retry")
    more = [unique_email("more") for _ in range(2)]  # enough for two full pages whatever else is there
    ids = {to: await staged(sessions, to) for to in (*more, sent_to, failing, retrying)}
    provider = ScriptedProvider({failing: DeliveryError("SendGrid answered 400", permanent=True),
                                 retrying: DeliveryError("SendGrid answered 503")})

    async def attempted() -> bool:
        await email_service.deliver_due(sessions, provider, notification_settings)
        async with sessions() as session:
            found = await session.execute(select(EmailMessage.attempts).where(EmailMessage.id.in_(ids.values())))
            return all(n >= 1 for n in found.scalars())

    await eventually_async(attempted, what="every staged email attempted once")
    # Its next attempt an hour away (as after a few failures), so it stays queued while we look.
    await db.execute("UPDATE email_messages SET next_attempt_at = now() + interval '1 hour' WHERE id = $1", ids[retrying])

    from prognetwork.notifications.app import create_app

    client = await serve_app(create_app(make_settings(
        "notification-service", JWKS_URL=jwks_server.url + "/.well-known/jwks.json")))
    operator = bearer(mint(signing_key, uuid.uuid4(), role="operator"))

    async def one(to: str) -> dict:
        response = await client.get("/v1/admin/emails", params={"recipient": to.upper()}, headers=operator)
        assert response.status_code == 200, response.text
        (email,) = response.json()["emails"]
        return email

    sent, failed, queued = await one(sent_to), await one(failing), await one(retrying)
    assert set(sent) == {"id", "kind", "recipient", "subject", "status", "attempts", "last_error", "created_at",
                         "sent_at", "next_attempt_at"}
    assert (sent["status"], sent["attempts"], sent["sent_at"] is not None, sent["next_attempt_at"]) == ("sent", 1, True, None)
    assert (failed["status"], failed["last_error"], failed["sent_at"], failed["next_attempt_at"]) == (
        "failed", "SendGrid answered 400", None, None)
    assert (queued["status"], queued["attempts"], queued["last_error"]) == ("queued", 1, "SendGrid answered 503")
    assert datetime.fromisoformat(queued["next_attempt_at"]) > datetime.now(UTC) + timedelta(minutes=50)
    assert sent["id"] == str(ids[sent_to]) and sent["kind"] == "verify-email" and sent["subject"] == "About verify-email"

    # By state, newest first, a page at a time.
    failures = (await client.get("/v1/admin/emails", params={"status": "failed", "limit": 100}, headers=operator)).json()
    assert str(ids[failing]) in [e["id"] for e in failures["emails"]]
    assert {e["status"] for e in failures["emails"]} == {"failed"}
    first = (await client.get("/v1/admin/emails", params={"limit": 2}, headers=operator)).json()
    second = (await client.get("/v1/admin/emails", params={"limit": 2, "before": first["next_before"]},
                               headers=operator)).json()
    listed = first["emails"] + second["emails"]
    assert first["next_before"] == first["emails"][-1]["id"] and len({e["id"] for e in listed}) == 4
    stamps = [(e["created_at"], e["id"]) for e in listed]
    assert stamps == sorted(stamps, reverse=True)
    assert_problem(await client.get("/v1/admin/emails", params={"status": "pending"}, headers=operator), 422)


async def test_emails_need_an_operator_or_admin_whose_session_is_live(admin_notifications, signing_key, redis_url):
    client = admin_notifications
    assert_problem(await client.get("/v1/admin/emails"), 401, "unauthenticated")
    user = await client.get("/v1/admin/emails", headers=bearer(mint(signing_key, uuid.uuid4(), role="user")))
    assert "platform role admin or operator; yours is user" in assert_problem(user, 403, "forbidden")["detail"]
    assert (await client.get("/v1/admin/emails", headers=bearer(mint(signing_key, uuid.uuid4(), role="admin")))).status_code == 200
    # A signed-out session's token is refused here too.
    sid = uuid.uuid4().hex
    redis = Redis.from_url(redis_url)
    try:
        await Revocations(redis).revoke([sid], 900)
    finally:
        await redis.aclose()
    revoked = await client.get("/v1/admin/emails", headers=bearer(mint(signing_key, uuid.uuid4(), role="admin", sid=sid)))
    assert "signed out" in assert_problem(revoked, 401, "invalid-token")["detail"]


# -- any tenant's subscription (the billing service) ---------------------------------------------------


@pytest.fixture
async def billing(serve_app, make_settings, jwks_server):
    from prognetwork.billing.app import create_app

    return await serve_app(create_app(make_settings("billing-service", JWKS_URL=jwks_server.url + "/.well-known/jwks.json")))


async def test_an_operator_reads_any_tenants_subscription(billing, db, signing_key):
    subscribed, never = uuid.uuid4(), uuid.uuid4()
    period_end = datetime(2031, 1, 1, tzinfo=UTC)
    await db.execute("INSERT INTO billing_subscriptions (tenant_id, stripe_subscription_id, plan, status, "
                     "current_period_end, cancel_at_period_end, seats, synced_at) "
                     "VALUES ($1, $2, 'pro', 'past_due', $3, true, 20, now())",
                     subscribed, f"sub_{subscribed.hex}", period_end)
    operator = bearer(mint(signing_key, uuid.uuid4(), role="operator"))
    response = await billing.get(f"/v1/admin/billing/subscriptions/{subscribed}", headers=operator)
    assert response.status_code == 200, response.text
    assert response.json() == {"plan": "pro", "status": "past_due", "current_period_end": "2031-01-01T00:00:00Z",
                               "cancel_at_period_end": True, "seats": 20}
    free = (await billing.get(f"/v1/admin/billing/subscriptions/{never}", headers=operator)).json()
    assert free == {"plan": "free", "status": "none", "current_period_end": None, "cancel_at_period_end": False,
                    "seats": 3}
    # A tenant's own owner is no platform operator.
    owner = bearer(mint(signing_key, uuid.uuid4(), role="user", tid=subscribed, tenant_role="owner"))
    problem = assert_problem(await billing.get(f"/v1/admin/billing/subscriptions/{subscribed}", headers=owner),
                             403, "forbidden")
    assert "platform role admin or operator; yours is user" in problem["detail"]
    assert_problem(await billing.get(f"/v1/admin/billing/subscriptions/{subscribed}"), 401, "unauthenticated")
    assert_problem(await billing.get("/v1/admin/billing/subscriptions/nope", headers=operator), 422)
