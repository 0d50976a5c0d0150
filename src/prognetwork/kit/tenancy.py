"""Tenant isolation in depth: PostgreSQL row-level security over every tenant-scoped table.

Every tenant-scoped table has a `tenant_id` column and a policy that shows a transaction only
the rows of the tenant it declared with `scope()`. The policy is FORCEd and a scoped
transaction runs as the NOLOGIN role `TENANT_ROLE`, so neither the tables' owner nor a
superuser connection (local development, tests) slips past it: a query that forgets its
`WHERE tenant_id = …` finds nothing of another tenant rather than its rows.

The rule for code: every statement on a tenant-scoped table runs in a transaction that called
`scope()` first. Outside one, a connection that is not a superuser sees no tenant and the table
looks empty; a superuser (local development, tests) sees every row until `scope()` switches role.

Platform operators read across tenants through an explicit scope of its own, `scope_all_tenants()`:
the tenant tables' SELECT policies also admit every row while `ALL_TENANTS` is true (migration 0009),
and nothing else does, so such a transaction may read every tenant but write none (no tenant is
declared, and the write policies admit only the declared tenant's rows).
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

TENANT_ROLE = "prognetwork_tenant"
# SQL functions the policies call: the transaction's tenant and user, NULL when not declared.
CURRENT_TENANT = "prognetwork_current_tenant()"
CURRENT_USER = "prognetwork_current_user()"
# True only in a transaction that called `scope_all_tenants()`: the operators' cross-tenant reads.
ALL_TENANTS = "prognetwork_all_tenants()"

_SCOPE = text(
    "SELECT set_config('role', :role, true), set_config('app.tenant_id', :tenant, true), "
    "set_config('app.user_id', :user, true), set_config('app.all_tenants', '', true)"
)


async def scope(session: AsyncSession, tenant_id: uuid.UUID | None, user_id: uuid.UUID | None = None) -> None:
    """Restrict the current transaction to one tenant's rows (and `user_id`'s own memberships).

    `SET LOCAL` semantics: it ends with the transaction, so a pooled connection never carries
    one request's tenant into the next. Call it inside `async with session.begin():`.
    """
    if not session.in_transaction():
        raise RuntimeError("tenancy.scope() needs a transaction: call it inside `async with session.begin()`")
    await session.execute(
        _SCOPE,
        {"role": TENANT_ROLE, "tenant": str(tenant_id or ""), "user": str(user_id or "")},
    )


_UNSCOPE = text(
    "SELECT set_config('role', 'none', true), set_config('app.tenant_id', '', true), "
    "set_config('app.user_id', '', true), set_config('app.all_tenants', '', true)"
)


async def unscope(session: AsyncSession) -> None:
    """Back to the connection's own role and no tenant, for the rest of this transaction (a
    consumer's batch handles events of several tenants, then advances its cursor)."""
    await session.execute(_UNSCOPE)


_ALL_TENANTS_SCOPE = text(
    "SELECT set_config('role', :role, true), set_config('app.tenant_id', '', true), "
    "set_config('app.user_id', '', true), set_config('app.all_tenants', 'on', true)"
)


async def scope_all_tenants(session: AsyncSession) -> None:
    """Let the current transaction read every tenant's rows, and write none of them.

    For the platform's operators (the admin API), who are no member of the tenants they look at:
    the SELECT policies admit every row while this scope lasts; INSERT, UPDATE, DELETE and row
    locks still need a declared tenant, and this scope declares none. Like `scope()`, it ends with
    the transaction (`SET LOCAL`), and a later `scope()` or `unscope()` in the same one ends it.
    Authorising the operator is the caller's job: this only says what the database will show.
    """
    if not session.in_transaction():
        raise RuntimeError(
            "tenancy.scope_all_tenants() needs a transaction: call it inside `async with session.begin()`"
        )
    await session.execute(_ALL_TENANTS_SCOPE, {"role": TENANT_ROLE})


# -- what migrations run (op.execute each statement) -------------------------------------------


def role_statements() -> list[str]:
    """The scoped role, the functions policies use, and the role's rights on this schema.

    Roles are cluster-wide and several databases (tests) may migrate at once, so creation
    tolerates a concurrent twin. The migrating user is granted the role so it may SET it (a
    superuser may anyway; a managed database's owner user needs the grant).
    """
    return [
        # Created if missing; a user without CREATEROLE gets one clear line saying what a DBA must
        # run, instead of a permission error (also when the role exists but is not granted).
        f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TENANT_ROLE}') THEN
                BEGIN
                  CREATE ROLE {TENANT_ROLE} NOLOGIN;
                EXCEPTION
                  WHEN duplicate_object OR unique_violation THEN NULL;
                  WHEN insufficient_privilege THEN RAISE EXCEPTION USING MESSAGE = format(
                    'role {TENANT_ROLE} is missing and %I may not create it: as a database administrator, '
                    'run CREATE ROLE {TENANT_ROLE} NOLOGIN; GRANT {TENANT_ROLE} TO %I; then migrate again',
                    current_user, current_user);
                END;
              END IF;
              IF NOT pg_has_role(current_user, '{TENANT_ROLE}', 'MEMBER') THEN
                BEGIN
                  EXECUTE format('GRANT {TENANT_ROLE} TO %I', current_user);
                EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN
                  RAISE EXCEPTION USING MESSAGE = format(
                    '%I may not take role {TENANT_ROLE}: as a database administrator, run '
                    'GRANT {TENANT_ROLE} TO %I; then migrate again', current_user, current_user);
                END;
              END IF;
            END $$""",
        f"""CREATE OR REPLACE FUNCTION {CURRENT_TENANT} RETURNS uuid LANGUAGE sql STABLE AS
            $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$""",
        f"""CREATE OR REPLACE FUNCTION {CURRENT_USER} RETURNS uuid LANGUAGE sql STABLE AS
            $$ SELECT nullif(current_setting('app.user_id', true), '')::uuid $$""",
        f"GRANT USAGE ON SCHEMA public TO {TENANT_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {TENANT_ROLE}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {TENANT_ROLE}",
        # Tables later migrations create (as the same user) are usable in a scope too.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {TENANT_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {TENANT_ROLE}",
    ]


def all_tenants_statements() -> list[str]:
    """The function the operators' read policies call (migration 0009): true only inside
    `scope_all_tenants()`."""
    return [
        f"""CREATE OR REPLACE FUNCTION {ALL_TENANTS} RETURNS boolean LANGUAGE sql STABLE AS
            $$ SELECT coalesce(current_setting('app.all_tenants', true), '') = 'on' $$""",
    ]


def all_tenants_read_statements(table: str) -> list[str]:
    """A SELECT-only policy on `table` that admits every row inside `scope_all_tenants()`.

    Permissive policies are OR-ed per command, so reads see the scoped tenant's rows (as before)
    or, in the operators' scope, all of them; UPDATE, DELETE, INSERT and row locks are governed by
    the table's other policies only, which admit the declared tenant's rows and no other.
    """
    return [f"CREATE POLICY all_tenants_reads ON {table} FOR SELECT USING ({ALL_TENANTS})"]


def isolate_statements(table: str, using: str | None = None, check: str | None = None) -> list[str]:
    """Row-level security on `table`: rows of the scoped tenant only, enforced on its owner too.

    `using` widens what may be read (e.g. a member's own rows across tenants); `check` is what
    may be written, by default the scoped tenant's rows only.
    """
    own_tenant = f"tenant_id = {CURRENT_TENANT}"
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY tenant_isolation ON {table} USING ({using or own_tenant}) "
        f"WITH CHECK ({check or own_tenant})",
    ]


def release_statements(table: str) -> list[str]:
    """Undo `isolate_statements` (downgrades)."""
    return [
        f"DROP POLICY IF EXISTS tenant_isolation ON {table}",
        f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
    ]
