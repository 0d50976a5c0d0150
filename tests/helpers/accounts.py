"""User accounts through the user service's API: register, verify, log in."""

from __future__ import annotations

import json
import uuid

PASSWORD = "correct horse battery staple"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


async def register(client, email: str | None = None, password: str = PASSWORD, name: str = "Ada"):
    email = email or unique_email()
    response = await client.post("/v1/auth/register", json={"email": email, "password": password, "name": name})
    return email, response


async def verification_token(db, email: str) -> str:
    """The one-time token of the latest verification email to `email`, read from the event log."""
    row = await db.fetchrow(
        "SELECT payload FROM events WHERE type = 'user.email_verification_requested' "
        "AND payload->>'email' = $1 ORDER BY seq DESC LIMIT 1",
        email.lower(),
    )
    return json.loads(row["payload"])["token"]


async def verified_user(client, db, email: str | None = None, password: str = PASSWORD) -> str:
    email, response = await register(client, email, password)
    assert response.status_code == 202, response.text
    token = await verification_token(db, email)
    verified = await client.post("/v1/auth/verify-email", json={"token": token, "password": password})
    assert verified.status_code == 200, verified.text
    return email


async def login(client, email: str, password: str = PASSWORD):
    return await client.post("/v1/auth/login", json={"email": email, "password": password})
