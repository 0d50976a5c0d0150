"""Attacks on accounts and sessions: signing out for real, lockouts that cannot be raced or
turned against the owner, account pre-hijacking, and password reset. Real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from redis.asyncio import Redis

from prognetwork.kit.problems import Problem
from prognetwork.kit.revocation import KEY_PREFIX, Revocations
from tests.helpers.accounts import PASSWORD, login, register, unique_email, verification_token, verified_user
from tests.helpers.polling import eventually_async
from tests.helpers.problems import assert_problem

NEW_PASSWORD = "a brand new passphrase"


def bearer(tokens: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def signed_in(users, db, password: str = PASSWORD) -> tuple[str, dict]:
    email = await verified_user(users, db, password=password)
    response = await login(users, email, password)
    assert response.status_code == 200, response.text
    return email, response.json()


async def assert_signed_out(users, tokens: dict) -> None:
    me = await users.get("/v1/users/me", headers=bearer(tokens))
    body = assert_problem(me, 401, "invalid-token")
    assert "signed out" in body["detail"]
    assert_problem(await users.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}), 401)


async def reset_token(db, email: str) -> str:
    row = await db.fetchrow(
        "SELECT payload FROM events WHERE type = 'user.password_reset_requested' AND payload->>'email' = $1 "
        "ORDER BY seq DESC LIMIT 1", email)
    return json.loads(row["payload"])["token"]


# -- signing out ends the access token too, on all four paths ------------------------------------

async def test_logout_revokes_the_access_token(users, db):
    _, tokens = await signed_in(users, db)
    assert (await users.get("/v1/users/me", headers=bearer(tokens))).status_code == 200
    assert (await users.post("/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status_code == 204
    await assert_signed_out(users, tokens)


async def test_refresh_token_reuse_revokes_every_access_token_of_the_family(users, db):
    _, first = await signed_in(users, db)
    second = (await users.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    # The thief replays the spent token: the family ends, including the access token it just got.
    assert_problem(await users.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}),
                   401, "refresh-token-reused")
    await assert_signed_out(users, first)
    await assert_signed_out(users, second)


async def test_password_reset_ends_every_session(users, db):
    email, phone = await signed_in(users, db)
    laptop = (await login(users, email)).json()
    assert (await users.post("/v1/auth/password-reset", json={"email": email})).status_code == 202
    token = await reset_token(db, email)
    confirmed = await users.post("/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD})
    assert confirmed.status_code == 204, confirmed.text
    await assert_signed_out(users, phone)
    await assert_signed_out(users, laptop)
    assert_problem(await login(users, email), 401, "invalid-credentials")
    assert (await login(users, email, NEW_PASSWORD)).status_code == 200
    user_id = await db.fetchval("SELECT id FROM users WHERE email = $1", email)
    audited = await db.fetchrow(
        "SELECT payload FROM events WHERE user_id = $1 AND type = 'user.password_reset'", user_id)
    assert json.loads(audited["payload"])["sessions_ended"] == 2
    # The link works once.
    again = await users.post("/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD})
    assert_problem(again, 400, "invalid-reset-link")


async def test_disabling_an_account_ends_its_sessions_and_refuses_login(users, db, users_settings):
    from prognetwork.users.admin import set_disabled

    email, tokens = await signed_in(users, db)
    await set_disabled(users_settings, email, True)
    await assert_signed_out(users, tokens)
    assert_problem(await login(users, email), 403, "account-disabled")
    await set_disabled(users_settings, email, False)
    assert (await login(users, email)).status_code == 200
    types = [r["type"] for r in await db.fetch(
        "SELECT e.type FROM events e JOIN users u ON u.id = e.user_id WHERE u.email = $1 ORDER BY seq", email)]
    assert types[-3:] == ["user.disabled", "user.enabled", "user.logged_in"]


async def test_revocation_lasts_one_access_token_lifetime(users, db, users_settings):
    _, tokens = await signed_in(users, db)
    await users.post("/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    import jwt

    sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    redis = Redis.from_url(users_settings.redis_dsn)
    try:
        ttl = await redis.ttl(KEY_PREFIX + sid)
    finally:
        await redis.aclose()
    assert users_settings.access_token_ttl_seconds < ttl <= users_settings.access_token_ttl_seconds + 10


async def test_unreachable_revocation_set_serves_reads_and_refuses_writes(free_tcp_port):
    # A real client against a port nobody listens on: the outage the policy is written for.
    redis = Redis.from_url(f"redis://127.0.0.1:{free_tcp_port}/0", socket_connect_timeout=0.5)
    try:
        revocations = Revocations(redis)
        claims = {"sub": str(uuid.uuid4()), "sid": "some-session"}
        await revocations.ensure_active(claims, "GET")  # fail open for reads
        with pytest.raises(Problem) as refused:
            await revocations.ensure_active(claims, "POST")
        assert refused.value.status == 503 and refused.value.kind == "revocation-check-unavailable"
        with pytest.raises(Problem) as no_session:
            await revocations.ensure_active({"sub": "x"}, "GET")
        assert no_session.value.status == 401
    finally:
        await redis.aclose()


@pytest.fixture
def free_tcp_port() -> int:
    from tests.helpers.ports import free_port

    return free_port()


# -- lockouts ------------------------------------------------------------------------------------

async def test_concurrent_guesses_never_exceed_the_limit(users, db, users_settings):
    email = await verified_user(users, db)
    guesses = await asyncio.gather(*(login(users, email, f"guess number {i}") for i in range(20)))
    statuses = sorted(r.status_code for r in guesses)
    # Exactly the limit was checked against the password; every other guess was refused unchecked.
    assert statuses.count(401) == users_settings.login_failures_per_account
    assert statuses.count(429) == 20 - users_settings.login_failures_per_account


async def test_a_strangers_failures_do_not_lock_the_owner_out(serve_app, make_settings, db):
    from prognetwork.users.app import create_app

    settings = make_settings("user-service")
    owner = await serve_app(create_app(settings), client_addr=("10.1.1.1", 1000))
    stranger = await serve_app(create_app(settings), client_addr=("10.66.6.6", 1000))
    email = await verified_user(owner, db)
    for _ in range(settings.login_failures_per_account + 3):
        assert (await login(stranger, email, "not the password")).status_code in (401, 429)
    assert_problem(await login(stranger, email), 429, "too-many-attempts")  # the stranger is locked out...
    assert (await login(owner, email)).status_code == 200  # ...the owner is not


async def test_account_wide_lockout_lets_a_known_device_and_a_reset_through(serve_app, make_settings, db):
    from prognetwork.users.app import create_app

    settings = make_settings("user-service", LOGIN_FAILURES_PER_ACCOUNT="2", LOGIN_FAILURES_PER_ACCOUNT_UNKNOWN_DEVICES="4")
    owner = await serve_app(create_app(settings), client_addr=("10.2.0.1", 1000))
    email = await verified_user(owner, db)
    first = await login(owner, email)
    device = first.json()["device_token"]
    # A distributed guesser: two failures from each of three addresses pass the per-address limit
    # but reach the account-wide limit for unknown devices.
    for n in range(3):
        guesser = await serve_app(create_app(settings), client_addr=(f"10.3.0.{n}", 1000))
        for _ in range(2):
            assert (await login(guesser, email, "not the password")).status_code in (401, 429)
    newcomer = await serve_app(create_app(settings), client_addr=("10.4.0.1", 1000))
    assert_problem(await login(newcomer, email), 429, "too-many-attempts")
    assert_problem(await login(owner, email), 429, "too-many-attempts")  # owner, but without the device token
    known = await owner.post("/v1/auth/login", json={"email": email, "password": PASSWORD, "device_token": device})
    assert known.status_code == 200, known.text
    assert known.json()["device_token"] != device  # rotated on every use
    # A device token of another account is just an unknown device.
    other = await verified_user(owner, db)
    assert_problem(await owner.post("/v1/auth/login", json={"email": email, "password": PASSWORD,
                                                            "device_token": (await login(owner, other)).json()["device_token"]}),
                   429, "too-many-attempts")
    # Whoever completes a password reset owns the address: the account-wide lockout no longer binds.
    await owner.post("/v1/auth/password-reset", json={"email": email})
    await owner.post("/v1/auth/password-reset/confirm", json={"token": await reset_token(db, email),
                                                              "password": NEW_PASSWORD})
    assert (await login(newcomer, email, NEW_PASSWORD)).status_code == 200


# -- account pre-hijacking -------------------------------------------------------------------------

async def test_first_registrant_cannot_keep_an_address_its_owner_claims(users, db):
    victim = unique_email("victim")
    assert (await register(users, victim, "attackers password", name="Click here: evil.example"))[1].status_code == 202
    attackers_link = await verification_token(db, victim)
    # The victim clicks the link they never asked for: their own password does not verify the attacker's account.
    hijack = await users.post("/v1/auth/verify-email", json={"token": attackers_link, "password": PASSWORD})
    assert_problem(hijack, 400, "verification-password-mismatch")
    assert await db.fetchval("SELECT email_verified_at FROM users WHERE email = $1", victim) is None
    # The victim registers: the unverified registration is replaced and the attacker's link dies.
    assert (await register(users, victim, PASSWORD, name="Victim"))[1].status_code == 202
    assert_problem(await users.post("/v1/auth/verify-email", json={"token": attackers_link,
                                                                    "password": "attackers password"}),
                   400, "invalid-verification-link")
    victims_link = await verification_token(db, victim)
    assert (await users.post("/v1/auth/verify-email", json={"token": victims_link, "password": PASSWORD})).status_code == 200
    assert_problem(await login(users, victim, "attackers password"), 401, "invalid-credentials")
    assert (await login(users, victim)).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", victim) == 1
    replaced = await db.fetchval(
        "SELECT count(*) FROM events e JOIN users u ON u.id = e.user_id "
        "WHERE u.email = $1 AND e.type = 'user.registration_replaced'", victim)
    assert replaced == 1


async def test_unverified_registrations_expire(serve_app, make_settings, db):
    from prognetwork.users.admin import open_accounts
    from prognetwork.users.app import create_app

    settings = make_settings("user-service", UNVERIFIED_ACCOUNT_TTL_SECONDS="3600")
    email = unique_email("stale")
    kept = unique_email("recent")
    users = await serve_app(create_app(settings))
    await register(users, email)
    await register(users, kept)
    await db.execute("UPDATE users SET created_at = now() - interval '2 hours' WHERE email = $1", email)
    async with open_accounts(settings) as (accounts, session):
        assert await accounts.purge_unverified(session) >= 1
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 0
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", kept) == 1


# -- password reset --------------------------------------------------------------------------------

async def test_password_reset_answers_alike_for_any_address(users, db):
    email = await verified_user(users, db)
    known = await users.post("/v1/auth/password-reset", json={"email": email})
    unknown_email = unique_email("nobody")
    unknown = await users.post("/v1/auth/password-reset", json={"email": unknown_email})
    assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
    assert known.status_code == 202
    rows = await db.fetch("SELECT payload, private FROM events WHERE type = 'user.password_reset_requested' "
                          "AND payload->>'email' IN ($1, $2)", email, unknown_email)
    payloads = {json.loads(r["payload"])["email"]: json.loads(r["payload"]) for r in rows}
    assert all(r["private"] for r in rows) and len(rows) == 2
    assert "token" in payloads[email] and "token" not in payloads[unknown_email]


async def test_a_new_reset_link_voids_the_previous_one(users, db):
    email = await verified_user(users, db)
    await users.post("/v1/auth/password-reset", json={"email": email})
    first = await reset_token(db, email)
    await users.post("/v1/auth/password-reset", json={"email": email})
    second = await reset_token(db, email)
    assert_problem(await users.post("/v1/auth/password-reset/confirm", json={"token": first, "password": NEW_PASSWORD}),
                   400, "invalid-reset-link")
    assert (await users.post("/v1/auth/password-reset/confirm",
                             json={"token": second, "password": NEW_PASSWORD})).status_code == 204


# -- the operator's command ------------------------------------------------------------------------

def run_prog(service_env: dict[str, str], *args: str):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "prognetwork", *args], env={**os.environ, **service_env},
                          capture_output=True, text=True, timeout=60)


async def test_prog_users_disable_and_enable(users, db, service_env):
    from tests.helpers.threads import in_thread

    email, tokens = await signed_in(users, db)
    disabled = in_thread(run_prog, service_env, "users", "disable", email.upper())
    assert disabled.returncode == 0 and "disabled" in disabled.stdout, disabled.stderr

    async def refused():
        response = await users.get("/v1/users/me", headers=bearer(tokens))
        return response.status_code == 401 or None

    # The CLI's revocation reaches the service's followed copy when its follower reads the message.
    await eventually_async(refused, what="the signed-out token refused")
    await assert_signed_out(users, tokens)
    assert_problem(await login(users, email), 403, "account-disabled")
    enabled = in_thread(run_prog, service_env, "users", "enable", email)
    assert enabled.returncode == 0, enabled.stderr
    assert (await login(users, email)).status_code == 200
    unknown = in_thread(run_prog, service_env, "users", "disable", "nobody-here@example.com")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().count("\n") == 0 and "nobody-here@example.com" in unknown.stderr


# -- what a review found -------------------------------------------------------------------------

async def test_refreshing_keeps_the_session_index_alive_so_a_reset_still_finds_it(users, db, users_settings):
    import jwt

    email, tokens = await signed_in(users, db)
    user_id = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sub"]
    redis = Redis.from_url(users_settings.redis_dsn)
    try:
        index = f"auth:user-families:{user_id}"
        await redis.pexpire(index, 5000)  # as if the login were almost a refresh-token lifetime ago
        refreshed = (await users.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).json()
        assert await redis.pttl(index) > 5000
    finally:
        await redis.aclose()
    await users.post("/v1/auth/password-reset", json={"email": email})
    await users.post("/v1/auth/password-reset/confirm", json={"token": await reset_token(db, email),
                                                              "password": NEW_PASSWORD})
    await assert_signed_out(users, refreshed)


async def test_a_reset_forgets_every_known_device(serve_app, make_settings, db):
    from prognetwork.users.app import create_app

    settings = make_settings("user-service", LOGIN_FAILURES_PER_ACCOUNT="2", LOGIN_FAILURES_PER_ACCOUNT_UNKNOWN_DEVICES="2")
    owner = await serve_app(create_app(settings), client_addr=("10.5.0.1", 1000))
    email = await verified_user(owner, db)
    device = (await login(owner, email)).json()["device_token"]
    await owner.post("/v1/auth/password-reset", json={"email": email})
    await owner.post("/v1/auth/password-reset/confirm", json={"token": await reset_token(db, email),
                                                              "password": NEW_PASSWORD})
    for n in range(2):  # reach the account-wide limit for unknown devices from two addresses
        guesser = await serve_app(create_app(settings), client_addr=(f"10.6.0.{n}", 1000))
        for _ in range(2):
            await login(guesser, email, "not the password")
    # The device known before the reset is just another unknown device now.
    again = await owner.post("/v1/auth/login", json={"email": email, "password": NEW_PASSWORD, "device_token": device})
    assert_problem(again, 429, "too-many-attempts")


async def test_one_reset_link_used_twice_at_once_works_once(users, db):
    email = await verified_user(users, db)
    await users.post("/v1/auth/password-reset", json={"email": email})
    token = await reset_token(db, email)
    answers = await asyncio.gather(*(
        users.post("/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD + str(n)})
        for n in range(2)
    ))
    assert sorted(a.status_code for a in answers) == [204, 400]


async def test_a_link_whose_change_failed_stays_usable(users, db):
    email, _ = await register(users)
    token = await verification_token(db, email)
    wrong = await users.post("/v1/auth/verify-email", json={"token": token, "password": "not the password"})
    assert_problem(wrong, 400, "verification-password-mismatch")
    assert (await users.post("/v1/auth/verify-email", json={"token": token, "password": PASSWORD})).status_code == 200


async def test_account_emails_to_one_address_are_bounded(users, db, users_settings):
    victim = unique_email("flooded")
    answers = [(await register(users, victim, f"attacker password {n}"))[1] for n in range(7)]
    assert {a.status_code for a in answers} == {202} and len({a.text for a in answers}) == 1
    sent = await db.fetchval(
        "SELECT count(*) FROM events WHERE type = 'user.email_verification_requested' AND payload->>'email' = $1",
        victim)
    assert sent == users_settings.emails_per_address_per_hour


async def test_a_login_racing_a_password_reset_keeps_no_session(users, db):
    """A login whose password check straddles a reset must not come out with a live session
    proved by the old password (the reset ends sessions before and after its commit, and the
    login checks the sessions epoch around its own)."""
    for _ in range(5):
        email = await verified_user(users, db)
        await users.post("/v1/auth/password-reset", json={"email": email})
        token = await reset_token(db, email)
        raced, reset = await asyncio.gather(
            login(users, email),
            users.post("/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}),
        )
        assert reset.status_code == 204
        if raced.status_code == 200:  # the login finished first: the reset must have ended it
            await assert_signed_out(users, raced.json())
        else:
            assert_problem(raced, 401, "invalid-credentials")
