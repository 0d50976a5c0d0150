"""Hot reads straight through the driver (kit.db.Database.fetch_one), against real PostgreSQL: the
row or None, parameters by name, errors as SQLAlchemy raises them for any statement, and the pooled
connection always given back — or, when it was lost, replaced."""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI
from sqlalchemy import bindparam, func, literal, select

from prognetwork.kit import db as kit_db
from prognetwork.kit import problems
from prognetwork.users.models import User

BY_ID = kit_db.Query(select(User.email, User.name, User.role).where(User.id == bindparam("user_id")))
# A literal in the statement is bound as compiled; only the named parameter is given.
ROLE_BY_EMAIL = kit_db.Query(
    select(User.id).where(User.role == literal("user"), User.email == bindparam("email"))
)
BACKEND = kit_db.Query(select(func.pg_backend_pid().label("pid")))


@pytest.fixture
async def database(database_url):
    async with kit_db.open_database(database_url, 1, None) as opened:
        yield opened


@pytest.fixture
async def account(db) -> tuple[uuid.UUID, str]:
    user_id, email = uuid.uuid4(), f"reader-{uuid.uuid4().hex[:8]}@example.com"
    await db.execute("INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, 'Ada', 'x')", user_id, email)
    yield user_id, email
    await db.execute("DELETE FROM users WHERE id = $1", user_id)


async def test_a_row_by_its_named_parameter_or_none(database, account):
    user_id, email = account
    row = await database.fetch_one(BY_ID, user_id=user_id)
    assert (row["email"], row["name"], row["role"]) == (email, "Ada", "user")
    assert await database.fetch_one(BY_ID, user_id=uuid.uuid4()) is None
    assert (await database.fetch_one(ROLE_BY_EMAIL, email=email))["id"] == user_id
    assert database.engine.pool.checkedout() == 0


async def test_a_missing_parameter_is_named(database):
    with pytest.raises(TypeError, match="user_id"):
        await database.fetch_one(BY_ID)


@pytest.fixture
async def reader(database, serve_app):
    """A service-like app (our problem handlers) answering from fetch_one."""
    app = FastAPI()
    problems.install(app)

    @app.get("/user")
    async def user(user_id: str) -> dict:
        row = await database.fetch_one(BY_ID, user_id=user_id)  # as given: the driver checks it
        return {"email": row["email"]} if row else {}

    @app.get("/backend")
    async def backend() -> dict:
        return {"pid": (await database.fetch_one(BACKEND))["pid"]}

    return await serve_app(app)


async def test_a_value_the_driver_refuses_is_a_400_as_for_any_statement(reader, database, capsys):
    secret = "secret-not-a-uuid"
    response = await reader.get("/user", params={"user_id": secret})
    assert response.status_code == 400 and response.json()["type"].endswith("/invalid-value")
    (logged,) = [line for line in capsys.readouterr().out.splitlines() if "prognetwork.errors" in line]
    assert "database rejected a value" in logged and secret not in logged and secret not in response.text
    assert database.engine.pool.checkedout() == 0


async def test_a_lost_connection_is_a_503_and_the_next_read_reconnects(reader, database, db):
    first = (await reader.get("/backend")).json()["pid"]
    await db.execute("SELECT pg_terminate_backend($1)", first)
    answers = [await reader.get("/backend") for _ in range(2)]  # the lost one, or another pooled one
    lost = [r for r in answers if r.status_code != 200]
    assert [r.status_code for r in lost] == [503] and lost[0].headers["retry-after"]
    again = await reader.get("/backend")
    assert again.status_code == 200 and again.json()["pid"] != first
    assert database.engine.pool.checkedout() == 0
