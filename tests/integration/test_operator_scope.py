"""The platform operators' scope (`kit.tenancy.scope_all_tenants`): PostgreSQL's row-level security
lets it read every tenant's rows and write none of them, and leaves a tenant's own scope as it was."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from prognetwork.kit import tenancy

TABLES = ("tenants", "tenant_members", "tenant_invitations", "billing_customers", "billing_subscriptions")


def key(table: str) -> str:
    return "id" if table == "tenants" else "tenant_id"


async def seed_tenant(db) -> uuid.UUID:
    """A tenant with a row in every tenant-scoped table, written as the test's superuser (which row-level
    security does not bind)."""
    tenant, owner = uuid.uuid4(), uuid.uuid4()
    tag = tenant.hex[:12]
    await db.execute("INSERT INTO users (id, email, name, password_hash, email_verified_at) VALUES ($1, $2, 'Owner', 'x', now())",
                     owner, f"owner-{tag}@example.com")
    await db.execute("INSERT INTO tenants (id, name, slug) VALUES ($1, $2, $3)", tenant, f"Tenant {tag}", f"tenant-{tag}")
    await db.execute("INSERT INTO tenant_members (tenant_id, user_id, role) VALUES ($1, $2, 'owner')", tenant, owner)
    await db.execute("INSERT INTO tenant_invitations (id, tenant_id, email, role, token_digest, expires_at) "
                     "VALUES ($1, $2, $3, 'member', 'digest', $4)",
                     uuid.uuid4(), tenant, f"invitee-{tag}@example.com", datetime.now(UTC) + timedelta(days=1))
    await db.execute("INSERT INTO billing_customers (tenant_id, stripe_customer_id) VALUES ($1, $2)", tenant, f"cus_{tag}")
    await db.execute("INSERT INTO billing_subscriptions (tenant_id, stripe_subscription_id, plan, status, seats, synced_at) "
                     "VALUES ($1, $2, 'pro', 'active', 20, now())", tenant, f"sub_{tag}")
    return tenant


@pytest.fixture
async def tenants(db) -> tuple[uuid.UUID, uuid.UUID]:
    return await seed_tenant(db), await seed_tenant(db)


async def visible(session, table: str, ids: tuple[uuid.UUID, ...]) -> set[uuid.UUID]:
    """Which of these tenants' rows in `table` the current transaction can read."""
    rows = await session.execute(text(f"SELECT {key(table)} FROM {table} WHERE {key(table)} = ANY(:ids)"),  # noqa: S608
                                 {"ids": list(ids)})
    return set(rows.scalars().all())


async def test_the_operator_scope_reads_every_tenants_rows(sessions, tenants):
    async with sessions() as session, session.begin():
        await tenancy.scope_all_tenants(session)
        for table in TABLES:
            assert await visible(session, table, tenants) == set(tenants), table


async def test_the_operator_scope_cannot_change_any_tenants_rows(sessions, tenants, db):
    a, _ = tenants
    changes = {
        "tenants": "UPDATE tenants SET name = 'taken over' WHERE id = :t",
        "tenant_members": "UPDATE tenant_members SET role = 'member' WHERE tenant_id = :t",
        "tenant_invitations": "UPDATE tenant_invitations SET role = 'owner' WHERE tenant_id = :t",
        "billing_customers": "UPDATE billing_customers SET stripe_customer_id = 'cus_evil' WHERE tenant_id = :t",
        "billing_subscriptions": "UPDATE billing_subscriptions SET plan = 'enterprise' WHERE tenant_id = :t",
    }
    async with sessions() as session, session.begin():
        await tenancy.scope_all_tenants(session)
        for table, statement in changes.items():
            assert (await session.execute(text(statement), {"t": a})).rowcount == 0, table
            deleted = await session.execute(text(f"DELETE FROM {table} WHERE {key(table)} = :t"), {"t": a})  # noqa: S608
            assert deleted.rowcount == 0, table
            # Row locks are a write's first step: none either.
            locked = await session.execute(
                text(f"SELECT 1 FROM {table} WHERE {key(table)} = :t FOR UPDATE"), {"t": a})  # noqa: S608
            assert locked.all() == [], table
    inserts = {
        "tenants": "INSERT INTO tenants (id, name, slug) VALUES (:new, 'Planted', :slug)",
        "tenant_members": "INSERT INTO tenant_members (tenant_id, user_id, role) "
                          "SELECT :t, id, 'owner' FROM users LIMIT 1",
        "tenant_invitations": "INSERT INTO tenant_invitations (id, tenant_id, email, role, token_digest, expires_at) "
                              "VALUES (:new, :t, 'mole@example.com', 'owner', 'd', now() + interval '1 day')",
        "billing_customers": "INSERT INTO billing_customers (tenant_id, stripe_customer_id) VALUES (:new, :slug)",
        "billing_subscriptions": "INSERT INTO billing_subscriptions (tenant_id, stripe_subscription_id, plan, status, "
                                 "seats, synced_at) VALUES (:new, :slug, 'pro', 'active', 20, now())",
    }
    for table, statement in inserts.items():
        new = uuid.uuid4()
        with pytest.raises(DBAPIError, match=f"row-level security policy for table \"{table}\""):
            async with sessions() as session, session.begin():
                await tenancy.scope_all_tenants(session)
                await session.execute(text(statement), {"t": a, "new": new, "slug": f"planted-{new.hex}"})
    # Untouched, as the superuser sees it.
    assert await db.fetchval("SELECT name FROM tenants WHERE id = $1", a) == f"Tenant {a.hex[:12]}"
    assert await db.fetchval("SELECT plan FROM billing_subscriptions WHERE tenant_id = $1", a) == "pro"
    assert await db.fetchval("SELECT count(*) FROM tenant_members WHERE tenant_id = $1", a) == 1


async def test_a_tenant_scope_still_sees_only_its_own_rows(sessions, tenants):
    a, b = tenants
    async with sessions() as session, session.begin():
        await tenancy.scope(session, a)
        for table in TABLES:
            assert await visible(session, table, tenants) == {a}, table
        # And may still change them.
        changed = await session.execute(text("UPDATE billing_subscriptions SET seats = 21 WHERE tenant_id = :t"), {"t": a})
        assert changed.rowcount == 1
        await session.rollback()


async def test_a_later_tenant_scope_ends_the_operator_scope(sessions, tenants):
    a, _ = tenants
    async with sessions() as session, session.begin():
        await tenancy.scope_all_tenants(session)
        await tenancy.scope(session, a)
        for table in TABLES:
            assert await visible(session, table, tenants) == {a}, table


async def test_the_operator_scope_ends_with_its_transaction(sessions, tenants):
    async with sessions() as session:
        async with session.begin():
            await tenancy.scope_all_tenants(session)
        async with session.begin():
            await tenancy.scope(session, None)  # the scoped role, no tenant: nothing
            for table in TABLES:
                assert await visible(session, table, tenants) == set(), table


async def test_the_operator_scope_needs_a_transaction(sessions):
    async with sessions() as session:
        with pytest.raises(RuntimeError, match="transaction"):
            await tenancy.scope_all_tenants(session)
