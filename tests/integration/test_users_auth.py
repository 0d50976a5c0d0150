"""Every authentication path of the user service, against real PostgreSQL and Redis."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prognetwork.users.keys import generate_pem, load_key
from prognetwork.users.service import VERIFY_PURPOSE
from prognetwork.users.sessions import digest
from tests.helpers.accounts import PASSWORD, login, register, unique_email, verification_token, verified_user
from tests.helpers.problems import assert_problem


async def test_register_creates_unverified_account_and_events(users, db):
    email, response = await register(users, unique_email("Mixed.Case").replace("mixed", "MiXeD"))
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    stored = await db.fetchrow("SELECT id, name, password_hash, email_verified_at FROM users WHERE email = $1",
                               email.lower())
    assert stored["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert stored["name"] == "Ada" and stored["email_verified_at"] is None
    rows = await db.fetch("SELECT type, private, payload FROM events WHERE user_id = $1 ORDER BY seq", stored["id"])
    assert [(r["type"], r["private"]) for r in rows] == [
        ("user.registered", False), ("user.email_verification_requested", True),
    ]
    public = json.loads(rows[0]["payload"])
    assert public == {"user_id": str(stored["id"]), "email": email.lower(), "name": "Ada"}
    assert "token" not in rows[0]["payload"]
    # Mail to an address nobody has proved yet carries no text the registrant chose.
    assert "name" not in json.loads(rows[1]["payload"])


async def test_registration_answers_alike_whether_or_not_the_address_is_taken(users, db):
    email = await verified_user(users, db)
    _, fresh = await register(users, unique_email("fresh"))
    _, taken = await register(users, email.upper(), password="another password!", name="Someone Else")
    assert (taken.status_code, taken.json()) == (fresh.status_code, fresh.json()) == (202, fresh.json())
    stored = await db.fetchrow("SELECT id, name FROM users WHERE email = $1", email)
    assert stored["name"] == "Ada"
    assert (await login(users, email)).status_code == 200  # the owner's password is untouched
    assert_problem(await login(users, email, "another password!"), 401, "invalid-credentials")
    # The owner is told by email instead (an event the notification service turns into one).
    told = await db.fetchval("SELECT count(*) FROM events WHERE user_id = $1 AND type = 'user.registration_attempted'",
                             stored["id"])
    assert told == 1


async def test_full_flow_verify_login_me(users, db):
    email = await verified_user(users, db)
    response = await login(users, email)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 900
    me = await users.get("/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == email and me.json()["email_verified"] is True
    types = [r["type"] for r in await db.fetch(
        "SELECT e.type FROM events e JOIN users u ON u.id = e.user_id WHERE u.email = $1 ORDER BY seq", email)]
    assert types == ["user.registered", "user.email_verification_requested", "user.email_verified", "user.logged_in"]


async def test_me_answers_the_callers_profile_byte_for_byte(users, db):
    email = await verified_user(users, db)
    tokens = (await login(users, email)).json()
    row = await db.fetchrow("SELECT id, created_at FROM users WHERE email = $1", email)
    profile = {"id": str(row["id"]), "email": email, "name": "Ada", "role": "user", "email_verified": True,
               # As pydantic renders an aware UTC datetime.
               "created_at": row["created_at"].isoformat().replace("+00:00", "Z")}
    for _ in range(2):  # the second time the token's verification is remembered: the same answer
        me = await users.get("/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert me.status_code == 200, me.text
        assert me.content == json.dumps(profile, separators=(",", ":")).encode()
        assert sorted(me.headers) == ["content-length", "content-type", "x-request-id"]
        assert me.headers["content-type"] == "application/json"
        assert me.headers["content-length"] == str(len(me.content))


async def test_me_for_an_account_that_no_longer_exists_is_a_problem(users, db, users_settings, signing_key):
    key = load_key(signing_key)
    token = jwt.encode(claims(users_settings, sid=uuid.uuid4().hex), key.private, algorithm="EdDSA",
                       headers={"kid": key.kid})
    assert_problem(await me_with(users, token), 404, "unknown-user")


async def test_verification_token_works_once(users, db):
    email, _ = await register(users)
    token = await verification_token(db, email)
    verify = {"token": token, "password": PASSWORD}
    assert (await users.post("/v1/auth/verify-email", json=verify)).status_code == 200
    assert_problem(await users.post("/v1/auth/verify-email", json=verify), 400, "invalid-verification-link")
    assert_problem(await users.post("/v1/auth/verify-email", json={**verify, "token": "nope"}), 400,
                   "invalid-verification-link")
    verified_events = await db.fetchval(
        "SELECT count(*) FROM events e JOIN users u ON u.id = e.user_id "
        "WHERE u.email = $1 AND e.type = 'user.email_verified'", email)
    assert verified_events == 1


async def test_one_time_token_is_stored_hashed_with_ttl(users, db, users_settings):
    from redis.asyncio import Redis

    email, _ = await register(users)
    token = await verification_token(db, email)
    client = Redis.from_url(users_settings.redis_dsn)
    try:
        key = f"auth:{VERIFY_PURPOSE}:{digest(token)}"
        assert 0 < await client.ttl(key) <= users_settings.email_token_ttl_seconds
        assert not [k async for k in client.scan_iter(match=f"*{token}*")]
    finally:
        await client.aclose()


async def test_login_requires_verified_email(users):
    email, _ = await register(users)
    assert_problem(await login(users, email), 403, "email-not-verified")


async def test_wrong_password_and_unknown_email_answer_alike(users, db):
    email = await verified_user(users, db)
    wrong = assert_problem(await login(users, email, "not the password"), 401, "invalid-credentials")
    unknown = assert_problem(await login(users, unique_email("ghost")), 401, "invalid-credentials")
    assert {k: v for k, v in wrong.items() if k != "instance"} == {k: v for k, v in unknown.items() if k != "instance"}


async def test_account_throttled_after_repeated_failures_even_with_right_password(users, db, users_settings):
    email = await verified_user(users, db)
    for _ in range(users_settings.login_failures_per_account):
        assert (await login(users, email, "wrong password!")).status_code == 401
    throttled = await login(users, email)
    assert_problem(throttled, 429, "too-many-attempts")
    assert 0 < int(throttled.headers["retry-after"]) <= users_settings.login_failure_window_seconds


async def test_successful_login_resets_failure_count(users, db, users_settings):
    email = await verified_user(users, db)
    for _ in range(users_settings.login_failures_per_account - 1):
        assert (await login(users, email, "wrong password!")).status_code == 401
    assert (await login(users, email)).status_code == 200
    for _ in range(users_settings.login_failures_per_account - 1):
        assert (await login(users, email, "wrong password!")).status_code == 401
    assert (await login(users, email)).status_code == 200


async def test_client_address_throttled(serve_app, make_settings, db):
    from prognetwork.users.app import create_app

    settings = make_settings("user-service", LOGIN_ATTEMPTS_PER_ADDRESS="3")
    client = await serve_app(create_app(settings), client_addr=(f"10.9.{uuid.uuid4().int % 250}.7", 4000))
    for _ in range(3):
        assert (await login(client, unique_email("scan"))).status_code == 401
    assert_problem(await login(client, unique_email("scan")), 429, "too-many-attempts")


async def tokens_for(users, db) -> dict:
    email = await verified_user(users, db)
    response = await login(users, email)
    assert response.status_code == 200
    return response.json()


async def test_refresh_rotates_and_reuse_revokes_the_family(users, db):
    first = await tokens_for(users, db)
    rotated = await users.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    # The spent token comes back (stolen and replayed): the whole session dies.
    assert_problem(await users.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}),
                   401, "refresh-token-reused")
    assert_problem(await users.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}),
                   401, "invalid-refresh-token")
    user_id = jwt.decode(first["access_token"], options={"verify_signature": False})["sub"]
    revoked = await db.fetchval(
        "SELECT count(*) FROM events WHERE user_id = $1 AND type = 'user.session_revoked'", uuid.UUID(user_id))
    assert revoked == 1


async def test_unknown_refresh_token_rejected(users):
    assert_problem(await users.post("/v1/auth/refresh", json={"refresh_token": "x" * 43}), 401, "invalid-refresh-token")


async def test_logout_ends_the_session(users, db):
    tokens = await tokens_for(users, db)
    assert (await users.post("/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status_code == 204
    assert (await users.post("/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status_code == 204
    assert_problem(await users.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}), 401)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(users_settings, **overrides) -> dict:
    now = int(time.time())
    return {"iss": users_settings.jwt_issuer, "aud": users_settings.jwt_audience, "sub": str(uuid.uuid4()),
            "iat": now, "nbf": now, "exp": now + 300, "jti": uuid.uuid4().hex, **overrides}


async def me_with(users, token: str):
    return await users.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})


async def test_access_token_failures(users, db, users_settings, signing_key):
    good = await tokens_for(users, db)
    key = load_key(signing_key)
    header = jwt.get_unverified_header(good["access_token"])
    assert header == {"alg": "EdDSA", "kid": key.kid, "typ": "at+jwt"}

    def signed(body: dict, private=key.private, kid=key.kid) -> str:
        return jwt.encode(body, private, algorithm="EdDSA", headers={"kid": kid})

    cases = {
        "expired": signed(claims(users_settings, exp=int(time.time()) - 60, iat=int(time.time()) - 1000,
                                 nbf=int(time.time()) - 1000)),
        "wrong audience": signed(claims(users_settings, aud="someone-else")),
        "wrong issuer": signed(claims(users_settings, iss="https://evil.example")),
        "not yet valid": signed(claims(users_settings, nbf=int(time.time()) + 600)),
        "missing exp": signed({k: v for k, v in claims(users_settings).items() if k != "exp"}),
        "forged (other key, same kid)": signed(claims(users_settings), private=Ed25519PrivateKey.generate()),
        "unknown kid": signed(claims(users_settings), kid="unknown"),
        "alg none": f"{b64({'alg': 'none', 'kid': key.kid})}.{b64(claims(users_settings))}.",
        "HS256 with the public key as secret": _hs256_confusion(claims(users_settings), key),
        "tampered payload": _tamper(good["access_token"]),
        "garbage": "not-a-jwt",
    }
    for name, token in cases.items():
        response = await me_with(users, token)
        assert response.status_code == 401, f"{name}: {response.status_code} {response.text}"
        assert response.headers["www-authenticate"].startswith("Bearer"), name
    missing = await users.get("/v1/users/me")
    assert_problem(missing, 401, "unauthenticated")
    assert (await users.get("/v1/users/me", headers={"Authorization": "Basic abc"})).status_code == 401


def _hs256_confusion(body: dict, key) -> str:
    import hashlib
    import hmac

    header = b64({"alg": "HS256", "kid": key.kid, "typ": "JWT"})
    payload = b64(body)
    secret = key.jwk["x"].encode()
    signature = base64.urlsafe_b64encode(
        hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["role"] = "admin"
    return f"{header}.{b64(body)}.{signature}"


async def test_key_rotation_keeps_old_tokens_valid_until_retired(users, db, secrets_dir, signing_key):
    old = await tokens_for(users, db)
    new_pem = generate_pem()
    # Rotation: prepend the new key; the old one stays published so its tokens still verify.
    (secrets_dir / "JWT_SIGNING_KEYS").write_text(new_pem + "\n" + signing_key)
    jwks = (await users.get("/.well-known/jwks.json")).json()
    assert [k["kid"] for k in jwks["keys"]] == [load_key(new_pem).kid, load_key(signing_key).kid]
    fresh = await tokens_for(users, db)
    assert jwt.get_unverified_header(fresh["access_token"])["kid"] == load_key(new_pem).kid
    assert (await me_with(users, old["access_token"])).status_code == 200
    assert (await me_with(users, fresh["access_token"])).status_code == 200
    # Retire the old key: its tokens stop working, new ones keep working.
    (secrets_dir / "JWT_SIGNING_KEYS").write_text(new_pem)
    assert (await me_with(users, old["access_token"])).status_code == 401
    assert (await me_with(users, fresh["access_token"])).status_code == 200


async def test_jwks_publishes_only_public_material(users, signing_key):
    response = await users.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert "max-age" in response.headers["cache-control"]
    (key,) = response.json()["keys"]
    assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert key["kid"] == load_key(signing_key).kid


@pytest.mark.parametrize(
    "path,body,status",
    [
        ("/v1/auth/register", b'{"email": "a@example.com", "password": ', 400),
        ("/v1/auth/register", b'{"email": 5, "password": "long enough pw", "name": "x"}', 422),
        ("/v1/auth/register", b'{"email": "a@example.com", "password": "short", "name": "x"}', 422),
        ("/v1/auth/register", b'{"email": "not-an-email", "password": "long enough pw", "name": "x"}', 422),
        ("/v1/auth/register", b'{"email": "a@example.com", "password": "long enough pw", "name": "x", "role": "admin"}', 422),
        ("/v1/auth/register", b'[]', 422),
        ("/v1/auth/login", b'{"email": "a@example.com"}', 422),
        ("/v1/auth/refresh", b'{"refresh_token": 12}', 422),
        ("/v1/auth/verify-email", b'', 422),
    ],
)
async def test_bad_input_is_a_problem_and_changes_nothing(users, db, path, body, status):
    before = (await db.fetchval("SELECT count(*) FROM users"), await db.fetchval("SELECT count(*) FROM events"))
    response = await users.post(path, content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, status, "invalid-request")
    if status == 422:
        assert problem["errors"] and all("field" in e for e in problem["errors"])
    after = (await db.fetchval("SELECT count(*) FROM users"), await db.fetchval("SELECT count(*) FROM events"))
    assert after == before


async def test_oversized_body_rejected_declared_or_streamed(users, db, users_settings):
    before = await db.fetchval("SELECT count(*) FROM users")
    big = b'{"email": "big@example.com", "password": "long enough pw", "name": "' + b"x" * users_settings.max_body_bytes + b'"}'
    assert_problem(await users.post("/v1/auth/register", content=big, headers={"content-type": "application/json"}),
                   413, "body-too-large")

    async def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    streamed = await users.post("/v1/auth/register", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(streamed, 413, "body-too-large")
    assert await db.fetchval("SELECT count(*) FROM users") == before


async def test_unknown_route_and_method_are_problems(users):
    assert_problem(await users.get("/v1/nothing-here"), 404)
    assert_problem(await users.get("/v1/auth/login"), 405)
