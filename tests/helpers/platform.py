"""Platform roles (user, operator, admin) for tests of the admin API, and what it audits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from tests.helpers.accounts import login
from tests.helpers.tenants import Person, claims_of, person


async def with_role(users, db, role: str, prefix: str | None = None) -> Person:
    """A new signed-in account whose platform role is `role` (set as `prog users set-role` would),
    with tokens issued after the change, so they carry it."""
    who = await person(users, db, prefix or role)
    await db.execute("UPDATE users SET role = $1 WHERE id = $2", role, who.user_id)
    response = await login(users, who.email)
    assert response.status_code == 200, response.text
    who.tokens = response.json()
    assert claims_of(who.tokens)["role"] == role
    return who


async def only_admin(db, admin: Person) -> None:
    """Make `admin` the platform's one enabled admin (other tests' admins become users)."""
    await db.execute("UPDATE users SET role = 'user' WHERE role = 'admin' AND id <> $1", admin.user_id)


async def audit_records(db, target_id: uuid.UUID | str, action: str | None = None,
                        actor_id: uuid.UUID | None = None) -> list[dict]:
    """The audit records about a target (of one action, by one actor), oldest first, details decoded."""
    rows = await db.fetch(
        "SELECT * FROM audit_log WHERE target_id = $1 AND ($2::text IS NULL OR action = $2) "
        "AND ($3::uuid IS NULL OR actor_id = $3) ORDER BY seq",
        str(target_id), action, actor_id)
    return [{**dict(r), "details": json.loads(r["details"]) if isinstance(r["details"], str) else r["details"]}
            for r in rows]


async def event_types(db, user_id: uuid.UUID) -> list[str]:
    rows = await db.fetch("SELECT type FROM events WHERE user_id = $1 ORDER BY seq", user_id)
    return [r["type"] for r in rows]


def run_prog(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`prog …` as an operator runs it, in a process of its own against the test's databases."""
    return subprocess.run([sys.executable, "-m", "prognetwork", *args], env={**os.environ, **env}, input=stdin,
                          capture_output=True, text=True, timeout=120)
