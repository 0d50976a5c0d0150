"""Tenants in the user service, against real PostgreSQL and Redis: creating and reading them,
invitations, switching a session into one, roles and removal, seats from billing, and telling the
owners about a failed payment exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid

import pytest

from prognetwork.kit.events import Event, append, sequenced
from tests.helpers.accounts import unique_email
from tests.helpers.polling import eventually_async
from tests.helpers.problems import assert_problem
from tests.helpers.tenants import (
    accept,
    another_session,
    create_tenant,
    invitation_event,
    invite,
    join,
    person,
    refresh,
    switch,
    unique_name,
)
from tests.helpers.tokens import bearer, mint

BILLING_CONSUMER = "user-service.billing"


async def events_of(db, tenant_id: str, type: str) -> list[dict]:
    rows = await db.fetch("SELECT payload, private FROM events WHERE tenant_id = $1 AND type = $2 ORDER BY seq",
                          uuid.UUID(tenant_id), type)
    return [{**json.loads(r["payload"]), "_private": r["private"]} for r in rows]


# -- creating and reading ---------------------------------------------------------------------------

async def test_create_list_and_get_a_tenant(users, db):
    ada = await person(users, db, "ada")
    name = unique_name("Acme Rockets")
    created = await users.post("/v1/tenants", json={"name": name}, headers=ada.headers)
    assert created.status_code == 201, created.text
    tenant = created.json()
    assert set(tenant) == {"id", "name", "slug", "role"}
    assert tenant["name"] == name and tenant["role"] == "owner"
    assert tenant["slug"] == name.lower().replace(" ", "-")

    listed = await users.get("/v1/tenants", headers=ada.headers)
    assert listed.status_code == 200
    assert listed.json() == [tenant]

    detail = (await users.get(f"/v1/tenants/{tenant['id']}", headers=ada.headers)).json()
    assert {k: detail[k] for k in ("id", "name", "slug", "role", "plan", "seats", "members")} == {
        **tenant, "plan": "free", "seats": 3, "members": 1}

    (member,) = (await users.get(f"/v1/tenants/{tenant['id']}/members", headers=ada.headers)).json()
    assert member["user_id"] == str(ada.user_id) and member["email"] == ada.email
    assert member["role"] == "owner" and member["name"] == "Ada" and member["joined_at"]

    (event,) = await events_of(db, tenant["id"], "tenant.created")
    assert event == {"tenant_id": tenant["id"], "name": name, "slug": tenant["slug"],
                     "created_by": str(ada.user_id), "_private": False}


async def test_a_taken_slug_gets_a_short_suffix(users, db):
    ada, bob = await person(users, db, "ada"), await person(users, db, "bob")
    name = unique_name("Same Name")
    first = await create_tenant(users, ada, name)
    second = await create_tenant(users, bob, name)
    assert first["slug"] == name.lower().replace(" ", "-")
    assert re.fullmatch(re.escape(first["slug"]) + r"-[0-9a-f]{6}", second["slug"]), second["slug"]
    # Each sees only their own.
    assert [t["id"] for t in (await users.get("/v1/tenants", headers=bob.headers)).json()] == [second["id"]]


async def test_slugs_are_ascii_and_never_empty(users, db):
    ada = await person(users, db, "ada")
    suffix = uuid.uuid4().hex[:6]
    assert (await create_tenant(users, ada, f"Café Ünïcode — {suffix}!"))["slug"] == f"cafe-unicode-{suffix}"
    assert (await create_tenant(users, ada, "東京"))["slug"].startswith("tenant")


@pytest.mark.parametrize("body", [
    {"name": ""},
    {"name": "   "},
    {"name": "two\nlines"},
    {"name": "x" * 101},
    {"name": "Acme\u202egnp.exe"},
    {"name": "zero\u200bwidth"},
    {"name": "Acme", "plan": "enterprise"},
    {},
])
async def test_bad_tenant_input_is_a_problem_and_creates_nothing(users, db, body):
    ada = await person(users, db, "ada")
    response = await users.post("/v1/tenants", json=body, headers=ada.headers)
    problem = assert_problem(response, 422, "invalid-request")
    assert problem["errors"]
    assert (await users.get("/v1/tenants", headers=ada.headers)).json() == []


async def test_tenant_routes_need_a_signed_in_caller(users):
    assert_problem(await users.get("/v1/tenants"), 401, "unauthenticated")
    assert_problem(await users.post("/v1/tenants", json={"name": "Acme"}), 401, "unauthenticated")
    assert_problem(await users.post("/v1/invitations/accept", json={"token": "x"}), 401, "unauthenticated")


async def test_a_token_that_outlived_its_account_creates_no_tenant(users, db, signing_key):
    response = await users.post("/v1/tenants", json={"name": "Acme"}, headers=bearer(mint(signing_key, uuid.uuid4())))
    assert_problem(response, 404, "unknown-user")
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'tenant.created' AND payload->>'name' = 'Acme'"
                             " AND user_id NOT IN (SELECT id FROM users)") == 0


# -- invitations ------------------------------------------------------------------------------------

async def test_invitation_is_accepted_by_the_verified_owner_of_the_address(users, db, users_settings):
    ada, bob = await person(users, db, "ada"), await person(users, db, "bob")
    tenant = await create_tenant(users, ada)
    invited = await users.post(f"/v1/tenants/{tenant['id']}/invitations",
                               json={"email": bob.email.upper(), "role": "admin"}, headers=ada.headers)
    assert invited.status_code == 201, invited.text
    invitation = invited.json()
    assert invitation["email"] == bob.email and invitation["role"] == "admin" and invitation["expires_at"]

    event = await invitation_event(db, tenant["id"], bob.email)
    assert re.search(r"/accept-invitation\?token=([\w-]+)$", event["accept_url"]).group(1) == event["token"]
    assert {k: event[k] for k in ("tenant_name", "role", "expires_in", "invited_by", "invitation_id")} == {
        "tenant_name": tenant["name"], "role": "admin", "expires_in": users_settings.invitation_ttl_seconds,
        "invited_by": str(ada.user_id), "invitation_id": invitation["id"]}
    private = await db.fetchval("SELECT private FROM events WHERE type = 'tenant.member_invited' "
                                "AND payload->>'invitation_id' = $1", invitation["id"])
    assert private is True

    pending = (await users.get(f"/v1/tenants/{tenant['id']}/invitations", headers=ada.headers)).json()
    assert [(p["id"], p["email"], p["role"]) for p in pending] == [(invitation["id"], bob.email, "admin")]

    joined = await accept(users, bob, event["token"])
    assert joined.status_code == 201, joined.text
    assert joined.json() == {"tenant_id": tenant["id"], "role": "admin"}
    members = (await users.get(f"/v1/tenants/{tenant['id']}/members", headers=bob.headers)).json()
    assert [(m["email"], m["role"]) for m in members] == [(ada.email, "owner"), (bob.email, "admin")]
    assert (await users.get(f"/v1/tenants/{tenant['id']}/invitations", headers=ada.headers)).json() == []
    (joined_event,) = await events_of(db, tenant["id"], "tenant.member_joined")
    assert joined_event["user_id"] == str(bob.user_id) and joined_event["role"] == "admin"
    assert not joined_event["_private"]

    # One-time: the same link again is no invitation at all.
    assert_problem(await accept(users, bob, event["token"]), 404, "invitation-not-found")


async def test_an_invitation_for_someone_else_is_not_found_and_stays_usable(users, db):
    ada, bob, eve = (await person(users, db, "ada"), await person(users, db, "bob"), await person(users, db, "eve"))
    tenant = await create_tenant(users, ada)
    token = await invite(users, db, ada, tenant["id"], bob.email)
    stolen = assert_problem(await accept(users, eve, token), 404, "invitation-not-found")
    unknown = assert_problem(await accept(users, eve, "x" * 43), 404, "invitation-not-found")
    # Nothing tells the two apart: not whether the token exists, nor whose it is.
    assert {k: v for k, v in stolen.items() if k != "instance"} == {k: v for k, v in unknown.items() if k != "instance"}
    assert tenant["id"] not in json.dumps(stolen) and bob.email not in json.dumps(stolen)
    assert (await accept(users, bob, token)).status_code == 201
    assert (await users.get(f"/v1/tenants/{tenant['id']}", headers=eve.headers)).status_code == 404


async def test_inviting_again_replaces_the_pending_invitation(users, db):
    ada, bob = await person(users, db, "ada"), await person(users, db, "bob")
    tenant = await create_tenant(users, ada)
    first = await invite(users, db, ada, tenant["id"], bob.email, "member")
    second = await invite(users, db, ada, tenant["id"], bob.email, "admin")
    pending = (await users.get(f"/v1/tenants/{tenant['id']}/invitations", headers=ada.headers)).json()
    assert [(p["email"], p["role"]) for p in pending] == [(bob.email, "admin")]
    assert_problem(await accept(users, bob, first), 404, "invitation-not-found")
    assert (await accept(users, bob, second)).json()["role"] == "admin"


async def test_invitations_to_one_address_are_bounded_per_tenant(users, db, users_settings):
    ada, bob = await person(users, db, "ada"), await person(users, db, "bob")
    tenant, other = await create_tenant(users, ada), await create_tenant(users, bob)
    victim = unique_email("flooded")
    for _ in range(users_settings.emails_per_address_per_hour):
        await invite(users, db, ada, tenant["id"], victim)
    flood = await users.post(f"/v1/tenants/{tenant['id']}/invitations", json={"email": victim}, headers=ada.headers)
    assert_problem(flood, 429, "too-many-invitations")
    assert 0 < int(flood.headers["retry-after"]) <= 3600
    sent = await db.fetchval("SELECT count(*) FROM events WHERE type = 'tenant.member_invited' AND tenant_id = $1",
                             uuid.UUID(tenant["id"]))
    assert sent == users_settings.emails_per_address_per_hour
    # Another tenant's invitation still gets through.
    await invite(users, db, bob, other["id"], victim)


async def test_an_expired_invitation_is_not_found_nor_listed(users, db):
    ada, bob = await person(users, db, "ada"), await person(users, db, "bob")
    tenant = await create_tenant(users, ada)
    token = await invite(users, db, ada, tenant["id"], bob.email)
    # As if its time had passed (the test connection is a superuser: row-level security lets it by).
    await db.execute("UPDATE tenant_invitations SET expires_at = now() - interval '1 second' WHERE tenant_id = $1",
                     uuid.UUID(tenant["id"]))
    assert_problem(await accept(users, bob, token), 404, "invitation-not-found")
    assert (await users.get(f"/v1/tenants/{tenant['id']}/invitations", headers=ada.headers)).json() == []


async def test_a_member_cannot_be_invited_again(users, db):
    ada, bob = await person(users, db, "ada"), await person(users, db, "bob")
    tenant = await create_tenant(users, ada)
    await join(users, db, ada, tenant["id"], joiner=bob)
    again = await users.post(f"/v1/tenants/{tenant['id']}/invitations", json={"email": bob.email},
                             headers=ada.headers)
    assert_problem(again, 409, "already-a-member")


async def test_who_may_invite_whom(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    admin = await join(users, db, ada, tenant["id"], "admin", "admin")
    member = await join(users, db, ada, tenant["id"], "member", "plain")
    path = f"/v1/tenants/{tenant['id']}/invitations"
    by_member = assert_problem(await users.post(path, json={"email": unique_email()}, headers=member.headers),
                               403, "forbidden")
    assert "owner or admin" in by_member["detail"]
    assert_problem(await users.get(path, headers=member.headers), 403, "forbidden")
    by_admin = assert_problem(await users.post(path, json={"email": unique_email(), "role": "owner"},
                                               headers=admin.headers), 403, "forbidden")
    assert "owner" in by_admin["detail"]
    assert (await users.post(path, json={"email": unique_email(), "role": "admin"}, headers=admin.headers)).status_code == 201
    assert (await users.post(path, json={"email": unique_email(), "role": "owner"}, headers=ada.headers)).status_code == 201
    bad_role = await users.post(path, json={"email": unique_email(), "role": "superuser"}, headers=ada.headers)
    assert_problem(bad_role, 422, "invalid-request")
    assert_problem(await users.post(path, json={"email": "not-an-address"}, headers=ada.headers), 422)


# -- switching a session into a tenant ------------------------------------------------------------

async def test_switching_puts_the_tenant_and_role_in_the_token_and_refresh_keeps_them(users, db):
    ada = await person(users, db, "ada")
    assert "tid" not in ada.claims and "tenant_role" not in ada.claims
    tenant = await create_tenant(users, ada)
    spent = ada.tokens["refresh_token"]
    switched = await switch(users, ada, tenant["id"])
    assert switched.status_code == 200, switched.text
    assert switched.headers["cache-control"] == "no-store"
    assert set(switched.json()) == {"access_token", "refresh_token", "token_type", "expires_in"}
    claims = ada.claims
    assert claims["tid"] == tenant["id"] and claims["tenant_role"] == "owner" and claims["role"] == "user"
    assert claims["sub"] == str(ada.user_id)
    assert (await users.get(f"/v1/tenants/{tenant['id']}", headers=ada.headers)).status_code == 200
    (event,) = await events_of(db, tenant["id"], "tenant.switched")
    assert event["user_id"] == str(ada.user_id) and event["session_id"] == claims["sid"]

    assert (await refresh(users, ada)).status_code == 200
    assert (ada.claims["tid"], ada.claims["tenant_role"], ada.claims["sid"]) == (tenant["id"], "owner", claims["sid"])

    # The switch spent the token it was given: replaying it is reuse, and ends the session.
    replay = await users.post("/v1/auth/refresh", json={"refresh_token": spent})
    assert_problem(replay, 401, "refresh-token-reused")
    assert_problem(await refresh(users, ada), 401, "invalid-refresh-token")


async def test_switching_into_a_tenant_one_is_not_a_member_of_is_not_found_and_spends_nothing(users, db):
    ada, eve = await person(users, db, "ada"), await person(users, db, "eve")
    tenant = await create_tenant(users, ada)
    for tenant_id in (tenant["id"], str(uuid.uuid4())):
        refused = assert_problem(await switch(users, eve, tenant_id), 404, "tenant-not-found")
        assert tenant_id not in refused["detail"]
    # The refresh token was not spent: it still works, and carries no tenant.
    assert (await refresh(users, eve)).status_code == 200
    assert "tid" not in eve.claims
    assert_problem(await users.post("/v1/auth/switch-tenant", json={"refresh_token": "x" * 43,
                                                                      "tenant_id": tenant["id"]}),
                   401, "invalid-refresh-token")
    assert_problem(await users.post("/v1/auth/switch-tenant", json={"refresh_token": "x", "tenant_id": "nope"}),
                   422, "invalid-request")


async def test_refresh_rereads_the_role_and_drops_the_tenant_of_a_member_who_left(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    bob = await join(users, db, ada, tenant["id"], "member", "bob")
    assert (await switch(users, bob, tenant["id"])).status_code == 200
    assert bob.claims["tenant_role"] == "member"
    promoted = await users.patch(f"/v1/tenants/{tenant['id']}/members/{bob.user_id}", json={"role": "admin"},
                                 headers=ada.headers)
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    assert (await refresh(users, bob)).status_code == 200
    assert bob.claims["tenant_role"] == "admin"
    # Leaving takes the session out of the tenant without signing it out.
    assert (await users.delete(f"/v1/tenants/{tenant['id']}/members/{bob.user_id}", headers=bob.headers)).status_code == 204
    assert (await users.get("/v1/users/me", headers=bob.headers)).status_code == 200
    assert (await refresh(users, bob)).status_code == 200
    assert "tid" not in bob.claims and "tenant_role" not in bob.claims
    assert_problem(await switch(users, bob, tenant["id"]), 404, "tenant-not-found")


async def test_removing_a_member_ends_their_sessions_inside_the_tenant(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    other = await create_tenant(users, ada)
    bob = await join(users, db, ada, tenant["id"], "member", "bob")
    await join(users, db, ada, other["id"], joiner=bob)
    # Two sessions of Bob's: one inside the tenant, one inside another tenant.
    inside = bob
    elsewhere = await another_session(users, bob)
    assert (await switch(users, inside, tenant["id"])).status_code == 200
    assert (await switch(users, elsewhere, other["id"])).status_code == 200

    removed = await users.delete(f"/v1/tenants/{tenant['id']}/members/{bob.user_id}", headers=ada.headers)
    assert removed.status_code == 204, removed.text
    signed_out = assert_problem(await users.get("/v1/users/me", headers=inside.headers), 401, "invalid-token")
    assert "signed out" in signed_out["detail"]
    assert_problem(await refresh(users, inside), 401, "invalid-refresh-token")
    # The session in the other tenant is untouched.
    assert (await users.get("/v1/users/me", headers=elsewhere.headers)).status_code == 200
    assert (await refresh(users, elsewhere)).status_code == 200 and elsewhere.claims["tid"] == other["id"]

    members = (await users.get(f"/v1/tenants/{tenant['id']}/members", headers=ada.headers)).json()
    assert [m["email"] for m in members] == [ada.email]
    (event,) = await events_of(db, tenant["id"], "tenant.member_removed")
    assert event["user_id"] == str(bob.user_id) and event["left"] is False and event["sessions_ended"] == 1
    assert_problem(await users.get(f"/v1/tenants/{tenant['id']}", headers=elsewhere.headers), 404, "tenant-not-found")
    assert_problem(await users.delete(f"/v1/tenants/{tenant['id']}/members/{bob.user_id}", headers=ada.headers),
                   404, "member-not-found")


async def test_switching_away_does_not_keep_a_removed_members_token_for_the_tenant(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    bob = await join(users, db, ada, tenant["id"], "admin", "bob")
    own = await create_tenant(users, bob)
    assert (await switch(users, bob, tenant["id"])).status_code == 200
    kept = dict(bob.headers)  # an access token carrying the tenant, kept by its holder
    # The same session moves on to a tenant of Bob's own before Ada removes him.
    assert (await switch(users, bob, own["id"])).status_code == 200
    removed = await users.delete(f"/v1/tenants/{tenant['id']}/members/{bob.user_id}", headers=ada.headers)
    assert removed.status_code == 204, removed.text
    assert_problem(await users.get("/v1/users/me", headers=kept), 401, "invalid-token")
    (event,) = await events_of(db, tenant["id"], "tenant.member_removed")
    assert event["sessions_ended"] == 1


async def test_a_demotion_ends_the_tokens_that_carry_the_old_role(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    bob = await join(users, db, ada, tenant["id"], "admin", "bob")
    assert (await switch(users, bob, tenant["id"])).status_code == 200 and bob.claims["tenant_role"] == "admin"
    demoted = await users.patch(f"/v1/tenants/{tenant['id']}/members/{bob.user_id}", json={"role": "member"},
                                headers=ada.headers)
    assert demoted.status_code == 200, demoted.text
    assert_problem(await users.get("/v1/users/me", headers=bob.headers), 401, "invalid-token")
    # A promotion takes nothing away: it shows at the next refresh.
    carol = await join(users, db, ada, tenant["id"], "member", "carol")
    assert (await switch(users, carol, tenant["id"])).status_code == 200
    promoted = await users.patch(f"/v1/tenants/{tenant['id']}/members/{carol.user_id}", json={"role": "admin"},
                                 headers=ada.headers)
    assert promoted.status_code == 200
    assert (await users.get("/v1/users/me", headers=carol.headers)).status_code == 200
    assert (await refresh(users, carol)).status_code == 200 and carol.claims["tenant_role"] == "admin"


async def test_an_invitation_is_void_once_its_inviter_lost_the_authority_to_send_it(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    olga = await join(users, db, ada, tenant["id"], "owner", "olga")
    xavier = await person(users, db, "xavier")
    token = await invite(users, db, olga, tenant["id"], xavier.email, "owner")
    demoted = await users.patch(f"/v1/tenants/{tenant['id']}/members/{olga.user_id}", json={"role": "member"},
                                headers=ada.headers)
    assert demoted.status_code == 200, demoted.text
    assert_problem(await accept(users, xavier, token), 404, "invitation-not-found")
    members = (await users.get(f"/v1/tenants/{tenant['id']}/members", headers=ada.headers)).json()
    assert xavier.email not in [m["email"] for m in members]


# -- roles, removal and the last owner ----------------------------------------------------------------

async def test_admins_manage_members_but_not_owners(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    admin = await join(users, db, ada, tenant["id"], "admin", "admin")
    member = await join(users, db, ada, tenant["id"], "member", "plain")
    members = f"/v1/tenants/{tenant['id']}/members"

    assert_problem(await users.patch(f"{members}/{ada.user_id}", json={"role": "member"}, headers=admin.headers),
                   403, "forbidden")
    assert_problem(await users.delete(f"{members}/{ada.user_id}", headers=admin.headers), 403, "forbidden")
    assert_problem(await users.patch(f"{members}/{member.user_id}", json={"role": "owner"}, headers=admin.headers),
                   403, "forbidden")
    by_member = assert_problem(await users.patch(f"{members}/{admin.user_id}", json={"role": "member"},
                                                 headers=member.headers), 403, "forbidden")
    assert "owner or admin" in by_member["detail"] and "member" in by_member["detail"]
    assert_problem(await users.delete(f"{members}/{admin.user_id}", headers=member.headers), 403, "forbidden")
    assert_problem(await users.patch(f"{members}/{uuid.uuid4()}", json={"role": "admin"}, headers=admin.headers),
                   404, "member-not-found")
    assert_problem(await users.patch(f"{members}/{member.user_id}", json={"role": "boss"}, headers=admin.headers),
                   422, "invalid-request")

    changed = await users.patch(f"{members}/{member.user_id}", json={"role": "admin"}, headers=admin.headers)
    assert changed.status_code == 200 and changed.json()["role"] == "admin"
    (event,) = await events_of(db, tenant["id"], "tenant.member_role_changed")
    assert (event["user_id"], event["role"], event["previous_role"], event["changed_by"]) == (
        str(member.user_id), "admin", "member", str(admin.user_id))
    assert (await users.delete(f"{members}/{member.user_id}", headers=admin.headers)).status_code == 204
    assert (await users.patch(f"{members}/{admin.user_id}", json={"role": "owner"}, headers=ada.headers)).status_code == 200
    assert [m["role"] for m in (await users.get(members, headers=ada.headers)).json()] == ["owner", "owner"]


async def test_the_last_owner_can_neither_leave_nor_be_demoted(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    members = f"/v1/tenants/{tenant['id']}/members"
    left = assert_problem(await users.delete(f"{members}/{ada.user_id}", headers=ada.headers), 409, "last-owner")
    assert "owner" in left["detail"]
    assert_problem(await users.patch(f"{members}/{ada.user_id}", json={"role": "admin"}, headers=ada.headers),
                   409, "last-owner")
    # With a second owner, either may go.
    bob = await join(users, db, ada, tenant["id"], "owner", "bob")
    assert (await users.patch(f"{members}/{ada.user_id}", json={"role": "member"}, headers=ada.headers)).status_code == 200
    assert_problem(await users.delete(f"{members}/{bob.user_id}", headers=bob.headers), 409, "last-owner")
    assert (await users.delete(f"{members}/{ada.user_id}", headers=ada.headers)).status_code == 204
    assert [(m["email"], m["role"]) for m in (await users.get(members, headers=bob.headers)).json()] == [
        (bob.email, "owner")]


async def test_two_owners_leaving_at_once_leave_one_owner(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    bob = await join(users, db, ada, tenant["id"], "owner", "bob")
    members = f"/v1/tenants/{tenant['id']}/members"
    answers = await asyncio.gather(
        users.delete(f"{members}/{ada.user_id}", headers=ada.headers),
        users.delete(f"{members}/{bob.user_id}", headers=bob.headers),
    )
    assert sorted(a.status_code for a in answers) == [204, 409]
    (stayed,) = [who for who, answer in zip((ada, bob), answers, strict=True) if answer.status_code == 409]
    assert_problem(next(a for a in answers if a.status_code == 409), 409, "last-owner")
    remaining = (await users.get(members, headers=stayed.headers)).json()
    assert [(m["email"], m["role"]) for m in remaining] == [(stayed.email, "owner")]


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    bob = await join(users, db, ada, tenant["id"], "owner", "bob")
    members = f"/v1/tenants/{tenant['id']}/members"
    answers = await asyncio.gather(
        users.patch(f"{members}/{bob.user_id}", json={"role": "member"}, headers=ada.headers),
        users.patch(f"{members}/{ada.user_id}", json={"role": "member"}, headers=bob.headers),
    )
    # One goes first; the other is by then a member, whom the change is no longer allowed.
    assert sorted(a.status_code for a in answers) == [200, 403]
    owners = [m for m in (await users.get(members, headers=ada.headers)).json() if m["role"] == "owner"]
    assert len(owners) == 1


# -- seats, from billing -----------------------------------------------------------------------------

async def entitlements(sessions, tenant_id: str, plan: str, seats: int) -> int:
    """Append what billing appends when a tenant's plan changes; the event's sequence number."""
    async with sessions() as session, session.begin():
        event = await append(session, "billing.entitlements_changed",
                             {"tenant_id": tenant_id, "plan": plan, "seats": seats, "features": [], "status": "active"},
                             tenant_id=uuid.UUID(tenant_id))
    return await sequenced(sessions, event.id)


async def applied(db, seq: int) -> bool:
    position = await db.fetchval("SELECT position FROM consumer_cursors WHERE name = $1", BILLING_CONSUMER)
    return position is not None and position >= seq


async def test_the_free_plan_limits_members_until_billing_raises_the_seats(users, db, sessions):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    for n in range(2):
        await join(users, db, ada, tenant["id"], prefix=f"seat{n}")
    dan = await person(users, db, "dan")
    token = await invite(users, db, ada, tenant["id"], dan.email)
    full = assert_problem(await accept(users, dan, token), 409, "seat-limit-reached")
    assert full["detail"].startswith("The free plan allows 3 members and this tenant has 3.")

    seq = await entitlements(sessions, tenant["id"], "team", 5)
    await eventually_async(lambda: applied(db, seq), what="the billing consumer to apply the plan")
    detail = (await users.get(f"/v1/tenants/{tenant['id']}", headers=ada.headers)).json()
    assert (detail["plan"], detail["seats"], detail["members"]) == ("team", 5, 3)
    # The invitation survived the refusal.
    assert (await accept(users, dan, token)).status_code == 201


async def test_an_older_entitlement_never_overwrites_a_newer_one(users, db, sessions, users_settings):
    from prognetwork.users.admin import open_accounts
    from prognetwork.users.tenants import Tenants

    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    seq = await entitlements(sessions, tenant["id"], "business", 20)
    await eventually_async(lambda: applied(db, seq), what="the billing consumer to apply the plan")
    older = Event(seq=seq - 1, id=uuid.uuid4(), type="billing.entitlements_changed", tenant_id=uuid.UUID(tenant["id"]),
                  payload={"tenant_id": tenant["id"], "plan": "free", "seats": 1, "features": [], "status": "canceled"})
    async with open_accounts(users_settings) as (accounts, _):
        async with sessions() as session, session.begin():
            await Tenants(users_settings, accounts).handle_billing_event(session, older)
    detail = (await users.get(f"/v1/tenants/{tenant['id']}", headers=ada.headers)).json()
    assert (detail["plan"], detail["seats"]) == ("business", 20)


async def test_an_unreadable_billing_event_is_skipped_not_retried_forever(users, db, sessions):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    async with sessions() as session, session.begin():
        await append(session, "billing.entitlements_changed", {"tenant_id": tenant["id"], "plan": "pro", "seats": "lots"},
                     tenant_id=uuid.UUID(tenant["id"]))
        await append(session, "billing.payment_failed", {"amount_due": 1})  # names no tenant
    seq = await entitlements(sessions, tenant["id"], "pro", 20)
    await eventually_async(lambda: applied(db, seq), what="the billing consumer to pass all three")
    detail = (await users.get(f"/v1/tenants/{tenant['id']}", headers=ada.headers)).json()
    assert (detail["plan"], detail["seats"]) == ("pro", 20)


async def test_two_accepts_cannot_both_take_the_last_seat(users, db, sessions):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    seq = await entitlements(sessions, tenant["id"], "duo", 2)
    await eventually_async(lambda: applied(db, seq), what="the billing consumer to apply the plan")
    bob, cid = await person(users, db, "bob"), await person(users, db, "cid")
    tokens = [await invite(users, db, ada, tenant["id"], p.email) for p in (bob, cid)]
    answers = await asyncio.gather(accept(users, bob, tokens[0]), accept(users, cid, tokens[1]))
    assert sorted(a.status_code for a in answers) == [201, 409]
    assert (await users.get(f"/v1/tenants/{tenant['id']}", headers=ada.headers)).json()["members"] == 2


# -- payment failures, told to every owner once ---------------------------------------------------------

async def payment_failed(sessions, tenant_id: str) -> Event:
    """The event as a consumer reads it from the log: with its sequence number."""
    async with sessions() as session, session.begin():
        event = await append(session, "billing.payment_failed",
                             {"tenant_id": tenant_id, "invoice_id": "in_test", "amount_due": 4200, "currency": "eur"},
                             tenant_id=uuid.UUID(tenant_id))
    return dataclasses.replace(event, seq=await sequenced(sessions, event.id))


async def test_a_failed_payment_is_told_to_each_owner_exactly_once(users, db, sessions, users_settings):
    from prognetwork.users.admin import open_accounts
    from prognetwork.users.tenants import Tenants

    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    bob = await join(users, db, ada, tenant["id"], "owner", "bob")
    await join(users, db, ada, tenant["id"], "admin", "admin")
    event = await payment_failed(sessions, tenant["id"])
    await eventually_async(lambda: applied(db, event.seq), what="the billing consumer to pass the event")

    notices = await events_of(db, tenant["id"], "tenant.payment_failed_notice")
    assert sorted(n["email"] for n in notices) == sorted([ada.email, bob.email])
    for notice in notices:
        assert notice["_private"] is True
        assert notice["tenant_name"] == tenant["name"] and notice["tenant_id"] == tenant["id"]
        assert (notice["amount_due"], notice["currency"]) == (4200, "eur")
        assert notice["billing_url"] == f"{users_settings.app_url}/billing?tenant={tenant['id']}"

    # Delivered again — by a consumer that restarted from an older cursor, or by hand — it tells nobody again.
    await db.execute("UPDATE consumer_cursors SET position = LEAST(position, $2) WHERE name = $1",
                     BILLING_CONSUMER, event.seq - 1)
    await eventually_async(lambda: applied(db, event.seq), what="the billing consumer to pass the event again")
    async with open_accounts(users_settings) as (accounts, _):
        async with sessions() as session, session.begin():
            await Tenants(users_settings, accounts).handle_billing_event(session, event)
    assert len(await events_of(db, tenant["id"], "tenant.payment_failed_notice")) == 2
