"""Hostile input at the edge of every service: a 4xx problem, nothing stored, nothing leaked.

Each case is one of the findings that used to reach PostgreSQL and answer 500: NUL bytes and
lone surrogates in strings, non-finite numbers in payloads, positions beyond 2^63-1 or
written with non-ASCII digits. The last tests check that a database error that does happen
is logged without the values bound to the statement.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from prognetwork.kit import db as kit_db
from prognetwork.kit import problems
from prognetwork.streaming.app import create_app as create_streaming
from prognetwork.streaming.settings import StreamingSettings
from tests.helpers.http import http_status
from tests.helpers.polling import eventually
from tests.helpers.threads import ThreadServer
from tests.helpers.tokens import bearer, mint

JSON = {"content-type": "application/json"}
INT64_MAX = 2**63 - 1
PASSWORD = "correct horse battery staple"


def raw(document: str) -> bytes:
    """A JSON body exactly as written: escapes such as \\ud800 and literals such as NaN kept."""
    return document.encode()


async def counts(db) -> tuple[int, ...]:
    return tuple([
        await db.fetchval("SELECT count(*) FROM users"),
        await db.fetchval("SELECT count(*) FROM events"),
        await db.fetchval("SELECT count(*) FROM event_publications"),
    ])


def assert_refused(response, status: int, kind: str | None = "invalid-request") -> dict:
    """A 4xx problem+json of this status (and kind), with a detail that says what is wrong."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"] and body["title"]
    if kind:
        assert body["type"].endswith("/" + kind), body
    return body


# --- user service ---------------------------------------------------------------------------

EMAIL = "mallory@example.com"
REGISTER_ATTACKS = {
    "nul in name": f'{{"email": "{EMAIL}", "password": "{PASSWORD}", "name": "Mal\\u0000lory"}}',
    "nul in email": f'{{"email": "mallory\\u0000@example.com", "password": "{PASSWORD}", "name": "M"}}',
    "nul in password": f'{{"email": "{EMAIL}", "password": "correct horse\\u0000battery", "name": "M"}}',
    "surrogate in name": f'{{"email": "{EMAIL}", "password": "{PASSWORD}", "name": "Mal\\ud800"}}',
    "surrogate in email": f'{{"email": "mal\\udfff@example.com", "password": "{PASSWORD}", "name": "M"}}',
    "surrogate in password": f'{{"email": "{EMAIL}", "password": "correct horse\\ud800battery", "name": "M"}}',
    "newline in name": f'{{"email": "{EMAIL}", "password": "{PASSWORD}", "name": "Mal\\nlory"}}',
}


@pytest.mark.parametrize("body", REGISTER_ATTACKS.values(), ids=REGISTER_ATTACKS.keys())
async def test_register_refuses_unstorable_text(users, db, body):
    before = await counts(db)
    problem = assert_refused(await users.post("/v1/auth/register", content=raw(body), headers=JSON), 422)
    assert problem["errors"] and problem["errors"][0]["field"] in {"email", "password", "name"}
    assert await counts(db) == before
    assert await db.fetchval("SELECT count(*) FROM users WHERE email LIKE 'mal%'") == 0


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/auth/login", f'{{"email": "{EMAIL}\\u0000", "password": "{PASSWORD}"}}'),
        ("/v1/auth/login", f'{{"email": "{EMAIL}", "password": "pw\\u0000"}}'),
        ("/v1/auth/login", f'{{"email": "{EMAIL}", "password": "pw\\ud800"}}'),
        ("/v1/auth/verify-email", '{"token": "abc\\u0000def"}'),
        ("/v1/auth/verify-email", '{"token": "abc\\ud800"}'),
        ("/v1/auth/verify-email", '{"token": "abc def"}'),
        ("/v1/auth/refresh", '{"refresh_token": "abc\\u0000def"}'),
        ("/v1/auth/refresh", '{"refresh_token": "\\udfffabc"}'),
        ("/v1/auth/logout", '{"refresh_token": "abc\\u0000def"}'),
    ],
)
async def test_auth_endpoints_refuse_unstorable_text(users, db, path, body):
    before = await counts(db)
    problem = assert_refused(await users.post(path, content=raw(body), headers=JSON), 422)
    assert "NUL" in problem["detail"] or "surrogate" in problem["detail"] or "ASCII" in problem["detail"]
    assert await counts(db) == before


# --- notification service --------------------------------------------------------------------


@pytest.mark.parametrize("to", ["a\x00@example.com", "a@example.com\n", "a\x1b@example.com"])
async def test_outbox_filter_refuses_control_characters(notifications, to):
    problem = assert_refused(await notifications.get("/v1/dev/outbox", params={"to": to}), 422)
    assert problem["errors"][0]["field"] == "query.to"


async def test_outbox_limit_is_bounded(notifications):
    assert_refused(await notifications.get("/v1/dev/outbox", params={"limit": str(INT64_MAX + 1)}), 422)


# --- streaming service -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def streaming(database_url, redis_url, jwks_server, tmp_path_factory):
    settings = StreamingSettings(
        PROG_ENV="development", DATABASE_URL=database_url, REDIS_URL=redis_url,
        JWKS_URL=jwks_server.url + "/.well-known/jwks.json",
        PROG_STATE_DIR=str(tmp_path_factory.mktemp("streaming")),
    )
    server = ThreadServer(create_streaming(settings))
    try:
        eventually(lambda: http_status(server.url + "/readiness") == 200, timeout=20, what="streaming ready")
        yield server
    finally:
        server.close()


@pytest.fixture
async def client(streaming):
    async with httpx.AsyncClient(base_url=streaming.url, timeout=10) as http:
        yield http


@pytest.fixture
def admin(signing_key) -> dict[str, str]:
    return bearer(mint(signing_key, uuid.uuid4(), role="admin"))


PAYLOAD_ATTACKS = {
    "NaN": '{"type": "app.note", "payload": {"x": NaN}}',
    "Infinity": '{"type": "app.note", "payload": {"x": [1, Infinity]}}',
    "-Infinity": '{"type": "app.note", "payload": {"x": -Infinity}}',
    "1e999": '{"type": "app.note", "payload": {"x": {"y": 1e999}}}',
    "int beyond 64 bits": '{"type": "app.note", "payload": {"x": 9223372036854775808}}',
    "nul in a string": '{"type": "app.note", "payload": {"x": "a\\u0000b"}}',
    "nul in a key": '{"type": "app.note", "payload": {"a\\u0000b": 1}}',
    "surrogate in a string": '{"type": "app.note", "payload": {"x": ["\\ud800"]}}',
    "surrogate in a key": '{"type": "app.note", "payload": {"\\udc00": 1}}',
    "too deep": '{"type": "app.note", "payload": {"x": ' + "[" * 40 + "]" * 40 + "}}",
    "nul in type": '{"type": "app.no\\u0000te", "payload": {}}',
    "surrogate in type": '{"type": "app.\\ud800", "payload": {}}',
}


@pytest.mark.parametrize("body", PAYLOAD_ATTACKS.values(), ids=PAYLOAD_ATTACKS.keys())
async def test_publish_refuses_what_jsonb_cannot_store(client, db, signing_key, body):
    user = bearer(mint(signing_key, uuid.uuid4()))
    before = await counts(db)
    response = await client.post("/v1/events", content=raw(body), headers=JSON | user | {"Idempotency-Key": "k1"})
    problem = assert_refused(response, 422)
    assert problem["errors"][0]["field"] in {"payload", "type"}, problem
    assert await counts(db) == before


async def test_publish_refuses_idempotency_keys_that_are_not_printable_ascii(client, db, admin):
    before = await counts(db)
    body = {"type": "app.note", "payload": {"ok": True}}
    for key in ("caf\u00e9".encode(), b"tab\there", b"obs-text\xff"):
        response = await client.post("/v1/events", json=body, headers=admin | {"Idempotency-Key": key})
        problem = assert_refused(response, 400, "idempotency-key-invalid")
        assert "printable ASCII" in problem["detail"]
    assert await counts(db) == before


async def test_a_clean_publish_still_works(client, db, admin):
    body = {"type": "app.note", "payload": {"text": "line\n\ttab ünïcode 🙂", "n": INT64_MAX, "f": -0.25}}
    key = f"order {uuid.uuid4().hex} ~!@#$%^&*()"  # any printable ASCII, inner spaces included
    response = await client.post("/v1/events", json=body, headers=admin | {"Idempotency-Key": key})
    assert response.status_code == 201, response.text
    stored = json.loads(await db.fetchval("SELECT payload FROM events WHERE seq = $1", response.json()["seq"]))
    assert stored == body["payload"]


@pytest.mark.parametrize(
    "params",
    [
        {"after": str(INT64_MAX + 1)},
        {"after": "99999999999999999999999"},
        {"after": "-1"},
        {"after": "١٢"},
        {"limit": str(INT64_MAX + 1)},
        {"types": "app.note\x00"},
        {"types": "app.note\n"},
        {"types": "app.note,app.\x01"},
    ],
)
async def test_polling_refuses_out_of_range_positions_and_bad_types(client, admin, params):
    problem = assert_refused(await client.get("/v1/events", params=params, headers=admin), 422)
    assert problem["errors"][0]["field"].startswith("query.")


async def test_polling_at_the_largest_position_is_empty(client, admin):
    response = await client.get("/v1/events", params={"after": str(INT64_MAX)}, headers=admin)
    assert response.status_code == 200 and response.json() == {"events": [], "next_after": INT64_MAX}


@pytest.mark.parametrize(
    "headers,params",
    [
        ({"Last-Event-ID": "١٢".encode()}, {}),  # sent as UTF-8 bytes, as a client would
        ({}, {"last_event_id": "١٢"}),
        ({}, {"last_event_id": "１２"}),
        ({"Last-Event-ID": "9" * 20}, {}),
        ({"Last-Event-ID": str(INT64_MAX + 1)}, {}),
        ({}, {"last_event_id": str(INT64_MAX + 1)}),
        ({"Last-Event-ID": "+12"}, {}),
        ({}, {"last_event_id": "1\x00"}),
    ],
)
async def test_stream_refuses_bad_last_event_ids(client, admin, headers, params):
    response = await client.get("/v1/events/stream", params=params, headers=admin | headers)
    problem = assert_refused(response, 400)
    assert "Last-Event-ID" in problem["detail"]


async def test_stream_refuses_bad_types(client, admin):
    assert_refused(await client.get("/v1/events/stream", params={"types": "app.x\x00"}, headers=admin), 422)


# --- database errors that get past the edge ----------------------------------------------------

SECRET = "$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0LXNhbHQ"


@pytest.fixture
async def leaky(database_url, serve_app):
    """A service-like app (our engine, our problem handlers) whose routes fail in the database."""
    engine = kit_db.create_engine(database_url, pool_size=1)
    app = FastAPI()
    problems.install(app)

    @app.get("/cast")
    async def cast() -> dict:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT CAST(CAST(:v AS text) AS integer)"), {"v": SECRET})
        return {}

    @app.get("/encode")
    async def encode() -> dict:
        async with engine.connect() as conn:  # fails in the driver, before PostgreSQL sees it
            await conn.execute(text("SELECT CAST(:v AS integer)"), {"v": SECRET})
        return {}

    @app.get("/duplicate")
    async def duplicate() -> dict:
        async with engine.connect() as conn:
            await conn.execute(text("CREATE TEMP TABLE accounts (email text PRIMARY KEY)"))
            for _ in range(2):
                await conn.execute(text("INSERT INTO accounts VALUES (:email)"), {"email": SECRET})
        return {}

    yield await serve_app(app)
    await engine.dispose()


@pytest.mark.parametrize("path,sqlstate", [("/cast", "22P02"), ("/encode", "22000")])
async def test_a_data_exception_is_a_400_and_the_log_has_no_values(leaky, capsys, path, sqlstate):
    problem = assert_refused(await leaky.get(path), 400, "invalid-value")
    assert SECRET not in json.dumps(problem)
    logged = capsys.readouterr().out
    assert sqlstate in logged and "database rejected a value" in logged
    assert SECRET not in logged and "c2VjcmV0" not in logged


async def test_an_unexpected_database_error_is_logged_without_bound_values(leaky, capsys):
    response = await leaky.get("/duplicate")
    assert response.status_code == 500 and SECRET not in response.text
    logged = capsys.readouterr().out
    # What is needed to find the cause is there: SQLSTATE, the statement, where it failed.
    line = next(json.loads(x) for x in logged.splitlines() if "unhandled database error" in x)
    assert line["sqlstate"] == "23505" and "INSERT INTO accounts" in line["statement"]
    assert any("duplicate" in frame for frame in line["stack"])
    # The driver's DETAIL ("Key (email)=(...) already exists") is not.
    assert "c2VjcmV0" not in logged


async def test_engines_hide_bound_parameters(database_url):
    engine = kit_db.create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception) as caught:
                await conn.execute(text("SELECT CAST(CAST(:v AS text) AS integer) + :w"), {"v": "x", "w": SECRET})
        assert SECRET not in str(caught.value) and "parameters hidden" in str(caught.value)
    finally:
        await engine.dispose()
