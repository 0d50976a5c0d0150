"""Row-level security as production runs it: migrated and used by the tables' owner, a login that
is not a superuser (a managed database's owner user), where only FORCE makes the policies bind."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from prognetwork.kit import migrations, tenancy
from tests.helpers.databases import with_database
from tests.helpers.threads import in_thread


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}"))


async def admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def owned_database(servers):
    """A database owned by a fresh login role with neither SUPERUSER nor CREATEROLE."""
    owner, name = f"prog_owner_{uuid.uuid4().hex[:8]}", f"prog_test_{uuid.uuid4().hex[:12]}"
    in_thread(asyncio.run, admin(servers.pg_admin_url, f"CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEROLE",
                                 f'CREATE DATABASE "{name}" OWNER {owner}'))
    yield owner, as_user(with_database(servers.pg_admin_url, name), owner), with_database(servers.pg_admin_url, name)
    in_thread(asyncio.run, admin(servers.pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                                 f"DROP ROLE IF EXISTS {owner}"))


def test_an_owner_without_the_role_is_told_what_a_dba_must_run_then_rls_binds_it(owned_database, servers):
    owner, url, superuser_url = owned_database
    # The role exists in this cluster (other databases' migrations made it) but is not this owner's.
    in_thread(asyncio.run, admin(servers.pg_admin_url, *tenancy.role_statements()[:1]))
    with pytest.raises(Exception, match=f"GRANT {tenancy.TENANT_ROLE} TO {owner}"):
        in_thread(migrations.upgrade, url)

    in_thread(asyncio.run, admin(servers.pg_admin_url, f"GRANT {tenancy.TENANT_ROLE} TO {owner}"))
    in_thread(migrations.upgrade, url)

    async def rows_seen() -> tuple[int, int, int]:
        a, b = uuid.uuid4(), uuid.uuid4()
        conn = await asyncpg.connect(url)
        try:
            for tenant in (a, b):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('role', $1, true), set_config('app.tenant_id', $2, true)",
                                       tenancy.TENANT_ROLE, str(tenant))
                    await conn.execute("INSERT INTO tenants (id, name, slug) VALUES ($1, 'T', $2)", tenant,
                                       f"t-{tenant.hex[:8]}")
            unscoped = await conn.fetchval("SELECT count(*) FROM tenants")  # the owner itself, no scope
            async with conn.transaction():
                await conn.execute("SELECT set_config('role', $1, true), set_config('app.tenant_id', $2, true)",
                                   tenancy.TENANT_ROLE, str(a))
                scoped = await conn.fetchval("SELECT count(*) FROM tenants")
            return unscoped, scoped, await asyncpg_superuser_count(superuser_url)
        finally:
            await conn.close()

    unscoped, scoped, everything = in_thread(asyncio.run, rows_seen())
    # FORCE: the owner sees nothing without a scope, one tenant's row within one.
    assert (unscoped, scoped, everything) == (0, 1, 2)


async def asyncpg_superuser_count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM tenants")
    finally:
        await conn.close()
