"""Tenants through the user service's API: signed-in people, tenants, invitations, switching into one."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import jwt

from tests.helpers.accounts import login, unique_email, verified_user


@dataclass
class Person:
    """A verified, signed-in account and its latest token pair."""

    email: str
    user_id: uuid.UUID
    tokens: dict = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}

    @property
    def claims(self) -> dict:
        return claims_of(self.tokens)


def claims_of(tokens: dict) -> dict:
    """The claims of a token pair's access token (already verified by whoever issued it)."""
    return jwt.decode(tokens["access_token"], options={"verify_signature": False})


async def person(users, db, prefix: str = "member") -> Person:
    email = await verified_user(users, db, unique_email(prefix))
    response = await login(users, email)
    assert response.status_code == 200, response.text
    tokens = response.json()
    return Person(email, uuid.UUID(claims_of(tokens)["sub"]), tokens)


def unique_name(prefix: str = "Acme") -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


async def create_tenant(users, owner: Person, name: str | None = None) -> dict:
    response = await users.post("/v1/tenants", json={"name": name or unique_name()}, headers=owner.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def invitation_event(db, tenant_id: str, email: str) -> dict:
    """The payload of the latest (private) invitation event for this address to this tenant."""
    row = await db.fetchrow(
        "SELECT payload FROM events WHERE type = 'tenant.member_invited' AND tenant_id = $1 "
        "AND payload->>'email' = $2 ORDER BY seq DESC LIMIT 1",
        uuid.UUID(tenant_id), email.lower())
    assert row is not None, f"no invitation of {email} to {tenant_id}"
    return json.loads(row["payload"])


async def invite(users, db, inviter: Person, tenant_id: str, email: str, role: str = "member") -> str:
    """Invite `email`; the one-time token the invitation email carries."""
    response = await users.post(f"/v1/tenants/{tenant_id}/invitations", json={"email": email, "role": role},
                                headers=inviter.headers)
    assert response.status_code == 201, response.text
    return (await invitation_event(db, tenant_id, email))["token"]


async def accept(users, who: Person, token: str):
    return await users.post("/v1/invitations/accept", json={"token": token}, headers=who.headers)


async def another_session(users, who: Person) -> Person:
    """The same account signed in once more (a second session, e.g. another device)."""
    response = await login(users, who.email)
    assert response.status_code == 200, response.text
    return Person(who.email, who.user_id, response.json())


async def join(users, db, inviter: Person, tenant_id: str, role: str = "member", prefix: str = "member",
               joiner: Person | None = None) -> Person:
    """`joiner` (or a new person), invited by `inviter` and now a member of the tenant with `role`."""
    joiner = joiner or await person(users, db, prefix)
    token = await invite(users, db, inviter, tenant_id, joiner.email, role)
    response = await accept(users, joiner, token)
    assert response.status_code == 201, response.text
    return joiner


async def switch(users, who: Person, tenant_id: str):
    """Switch `who`'s session into the tenant; on success `who.tokens` is the new pair."""
    response = await users.post("/v1/auth/switch-tenant",
                                json={"refresh_token": who.tokens["refresh_token"], "tenant_id": tenant_id})
    if response.status_code == 200:
        who.tokens = response.json()
    return response


async def refresh(users, who: Person):
    """Refresh `who`'s session; on success `who.tokens` is the new pair."""
    response = await users.post("/v1/auth/refresh", json={"refresh_token": who.tokens["refresh_token"]})
    if response.status_code == 200:
        who.tokens = response.json()
    return response
