"""Tenant isolation in depth: PostgreSQL row-level security over every tenant-scoped table.

Every tenant-scoped table has a `tenant_id` column and a policy that shows a transaction only
the rows of the tenant it declared with `scope()`. The policy is FORCEd and a scoped
transaction runs as the NOLOGIN role `TENANT_ROLE`, so neither the tables' owner nor a
superuser connection (local development, tests) slips past it: a query that forgets its
`WHERE tenant_id = …` finds nothing of another tenant rather than its rows.

The rule for code: every statement on a tenant-scoped table runs in a transaction that called
`scope()` first. Outside one, a connection that is not a superuser sees no tenant and the table
looks empty; a superuser (local development, tests) sees every row until `scope()` switches role.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

TENANT_ROLE = "prognetwork_tenant"
# SQL functions the policies call: the transaction's tenant and user, NULL when not declared.
CURRENT_TENANT = "prognetwork_current_tenant()"
CURRENT_USER = "prognetwork_current_user()"

_SCOPE = text(
    "SELECT set_config('role', :role, true), set_config('app.tenant_id', :tenant, true), "
    "set_config('app.user_id', :user, true)"
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
    "set_config('app.user_id', '', true)"
)


async def unscope(session: AsyncSession) -> None:
    """Back to the connection's own role and no tenant, for the rest of this transaction (a
    consumer's batch handles events of several tenants, then advances its cursor)."""
    await session.execute(_UNSCOPE)


# -- what migrations run (op.execute each statement) -------------------------------------------


def role_statements() -> list[str]:
    """The scoped role, the functions policies use, and the role's rights on this schema.

    Roles are cluster-wide and several databases (tests) may migrate at once, so creation
    tolerates a concurrent twin. The migrating user is granted the role so it may SET it (a
    superuser may anyway; a managed database's owner user needs the grant).
    """
    return [
        f"""DO $$ BEGIN
              CREATE ROLE {TENANT_ROLE} NOLOGIN;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END $$""",
        f"""DO $$ BEGIN
              EXECUTE format('GRANT {TENANT_ROLE} TO %I', current_user);
            EXCEPTION WHEN duplicate_object OR invalid_grant_operation THEN NULL;
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
