"""One tenant's data is out of another's reach: through the API (a stranger's tenant does not exist),
and underneath it, where PostgreSQL's row-level security shows a scoped transaction one tenant's rows
even when a query names none."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from prognetwork.kit import tenancy
from tests.helpers.problems import assert_problem
from tests.helpers.tenants import create_tenant, invite, join, person, switch, unique_name

TENANT_TABLES = ("tenants", "tenant_members", "tenant_invitations")


def without_instance(problem: dict) -> dict:
    return {k: v for k, v in problem.items() if k != "instance"}


async def test_a_member_of_one_tenant_finds_no_other(users, db):
    ada, bob = await person(users, db, "ada"), await person(users, db, "bob")
    mine = await create_tenant(users, ada)
    theirs = await create_tenant(users, bob, unique_name("Secret Plans"))
    await invite(users, db, bob, theirs["id"], "pending@example.com")
    # Inside her own tenant, with a token that says so: it grants nothing elsewhere.
    assert (await switch(users, ada, mine["id"])).status_code == 200

    def attempts(tenant_id: str):
        base = f"/v1/tenants/{tenant_id}"
        return [
            users.get(base, headers=ada.headers),
            users.get(f"{base}/members", headers=ada.headers),
            users.get(f"{base}/invitations", headers=ada.headers),
            users.post(f"{base}/invitations", json={"email": "mole@example.com", "role": "owner"}, headers=ada.headers),
            users.patch(f"{base}/members/{bob.user_id}", json={"role": "member"}, headers=ada.headers),
            users.delete(f"{base}/members/{bob.user_id}", headers=ada.headers),
            users.patch(f"{base}/members/{ada.user_id}", json={"role": "owner"}, headers=ada.headers),
        ]

    for existing, missing in zip(attempts(theirs["id"]), attempts(str(uuid.uuid4())), strict=True):
        refused = assert_problem(await existing, 404, "tenant-not-found")
        # The same answer as for a tenant that does not exist, and nothing of the tenant in it.
        assert without_instance(refused) == without_instance(assert_problem(await missing, 404, "tenant-not-found"))
        body = json.dumps(refused)
        assert theirs["name"] not in body and bob.email not in body and "pending@" not in body

    # Nothing changed over there.
    members = (await users.get(f"/v1/tenants/{theirs['id']}/members", headers=bob.headers)).json()
    assert [(m["email"], m["role"]) for m in members] == [(bob.email, "owner")]
    pending = (await users.get(f"/v1/tenants/{theirs['id']}/invitations", headers=bob.headers)).json()
    assert [p["email"] for p in pending] == ["pending@example.com"]
    assert [t["id"] for t in (await users.get("/v1/tenants", headers=ada.headers)).json()] == [mine["id"]]


async def test_a_former_member_finds_the_tenant_gone(users, db):
    ada = await person(users, db, "ada")
    tenant = await create_tenant(users, ada)
    bob = await join(users, db, ada, tenant["id"], "admin", "bob")
    assert (await users.delete(f"/v1/tenants/{tenant['id']}/members/{bob.user_id}", headers=ada.headers)).status_code == 204
    # His session was not inside the tenant, so it lives on; the tenant is gone from it.
    assert_problem(await users.get(f"/v1/tenants/{tenant['id']}/members", headers=bob.headers), 404, "tenant-not-found")
    assert (await users.get("/v1/tenants", headers=bob.headers)).json() == []


# -- the guard underneath: row-level security ---------------------------------------------------------

@pytest.fixture
async def two_tenants(users, db):
    """Tenants A (Ada, with Bob) and B (Bob alone), each with a pending invitation."""
    ada, bob = await person(users, db, "ada"), await person(users, db, "bob")
    a, b = await create_tenant(users, ada), await create_tenant(users, bob)
    await join(users, db, ada, a["id"], joiner=bob)
    await invite(users, db, ada, a["id"], "invited-to-a@example.com")
    await invite(users, db, bob, b["id"], "invited-to-b@example.com")
    return uuid.UUID(a["id"]), uuid.UUID(b["id"]), ada, bob


async def scoped_rows(sessions, tenant_id, user_id, sql: str) -> list:
    async with sessions() as session, session.begin():
        await tenancy.scope(session, tenant_id, user_id)
        return list((await session.execute(text(sql))).all())


async def test_a_scoped_transaction_sees_only_its_tenants_rows_even_without_a_where(sessions, two_tenants):
    a, b, ada, bob = two_tenants
    # No WHERE at all: the policy alone decides what these return.
    members = await scoped_rows(sessions, a, None, "SELECT tenant_id, user_id FROM tenant_members")
    assert {r.tenant_id for r in members} == {a} and {r.user_id for r in members} == {ada.user_id, bob.user_id}
    assert [r.id for r in await scoped_rows(sessions, a, None, "SELECT id FROM tenants")] == [a]
    invitations = await scoped_rows(sessions, a, None, "SELECT tenant_id, email FROM tenant_invitations")
    assert {r.tenant_id for r in invitations} == {a}  # Bob's accepted one, and the pending one
    assert {r.email for r in invitations} == {bob.email, "invited-to-a@example.com"}
    assert {r.tenant_id for r in await scoped_rows(sessions, b, None, "SELECT tenant_id FROM tenant_members")} == {b}


async def test_with_no_tenant_in_scope_the_tables_look_empty(sessions, two_tenants):
    for table in TENANT_TABLES:
        assert await scoped_rows(sessions, None, None, f"SELECT * FROM {table}") == [], table  # noqa: S608


async def test_a_user_scope_sees_their_own_memberships_and_tenants_only(sessions, two_tenants):
    a, b, ada, bob = two_tenants
    own = await scoped_rows(sessions, None, ada.user_id, "SELECT tenant_id, user_id FROM tenant_members")
    assert [(r.tenant_id, r.user_id) for r in own] == [(a, ada.user_id)]
    assert [r.id for r in await scoped_rows(sessions, None, ada.user_id, "SELECT id FROM tenants")] == [a]
    assert {r.id for r in await scoped_rows(sessions, None, bob.user_id, "SELECT id FROM tenants")} == {a, b}
    assert await scoped_rows(sessions, None, bob.user_id, "SELECT * FROM tenant_invitations") == []


async def test_a_scope_cannot_write_another_tenants_rows(sessions, two_tenants):
    a, b, ada, bob = two_tenants
    with pytest.raises(DBAPIError) as refused:
        async with sessions() as session, session.begin():
            await tenancy.scope(session, a, ada.user_id)
            await session.execute(
                text("INSERT INTO tenant_members (tenant_id, user_id, role) VALUES (:t, :u, 'owner')"),
                {"t": b, "u": ada.user_id})
    assert "row-level security" in str(refused.value.orig)
    with pytest.raises(DBAPIError):
        async with sessions() as session, session.begin():
            await tenancy.scope(session, a, ada.user_id)
            await session.execute(text("UPDATE tenant_members SET tenant_id = :b WHERE tenant_id = :a"),
                                  {"a": a, "b": b})
    # Bob may read his own membership of B from a scope without a tenant, but not change or delete it.
    async with sessions() as session, session.begin():
        await tenancy.scope(session, None, bob.user_id)
        promoted = await session.execute(text("UPDATE tenant_members SET role = 'member' WHERE tenant_id = :b"), {"b": b})
        deleted = await session.execute(text("DELETE FROM tenant_members WHERE tenant_id = :b"), {"b": b})
        renamed = await session.execute(text("UPDATE tenants SET name = 'mine now'"))
        assert (promoted.rowcount, deleted.rowcount, renamed.rowcount) == (0, 0, 0)
    assert [r.role for r in await scoped_rows(sessions, b, None, "SELECT role FROM tenant_members")] == ["owner"]


async def test_the_tenant_tables_are_forced_under_row_level_security_and_usable_by_the_scoped_role(db):
    rows = await db.fetch("SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                          "WHERE relname = ANY($1::text[]) AND relkind = 'r'", list(TENANT_TABLES))
    assert {(r["relname"], r["relrowsecurity"], r["relforcerowsecurity"]) for r in rows} == {
        (t, True, True) for t in TENANT_TABLES}
    for table in TENANT_TABLES:
        assert await db.fetchval("SELECT has_table_privilege($1, $2, 'SELECT, INSERT, UPDATE, DELETE')",
                                 tenancy.TENANT_ROLE, table), table
    # What a scoped transaction touches besides: the accounts, the event log and consumer cursors.
    for table in ("users", "events", "consumer_cursors"):
        assert await db.fetchval("SELECT has_table_privilege($1, $2, 'SELECT, INSERT, UPDATE')",
                                 tenancy.TENANT_ROLE, table), table
