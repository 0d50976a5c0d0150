"""The OpenAPI document lists, under each route, the problem kinds a client of it must handle."""

from __future__ import annotations

import re
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from prognetwork.kit.problems import ProblemType
from prognetwork.streaming import problems as streaming_problems
from prognetwork.users import problems as users_problems

KIND = re.compile(r"\(([a-z0-9-]+)\)")


@pytest.fixture
def env(tmp_path, secrets_dir) -> dict[str, str]:
    return {
        "PROG_ENV": "development", "PROG_STATE_DIR": str(tmp_path / "state"),
        "SECRETS_BACKEND": "file", "SECRETS_DIR": str(secrets_dir),
    }


@pytest.fixture
def streaming_app(env) -> FastAPI:
    from prognetwork.streaming.app import create_app
    from prognetwork.streaming.settings import StreamingSettings

    return create_app(StreamingSettings(**env))


@pytest.fixture
def users_app(env) -> FastAPI:
    from prognetwork.users.app import create_app
    from prognetwork.users.settings import UsersSettings

    return create_app(UsersSettings(**env))


@pytest.fixture
def notifications_app(env) -> FastAPI:
    from prognetwork.notifications.app import create_app
    from prognetwork.notifications.settings import NotificationSettings

    return create_app(NotificationSettings(**env))


async def openapi(app: FastAPI) -> dict:
    # The document needs no dependency: no lifespan, nothing started.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    return response.json()


def kinds(document: dict, method: str, path: str) -> dict[int, set[str]]:
    """The problem kinds each status of a route is documented with."""
    responses = document["paths"][path][method]["responses"]
    return {
        int(status): set(KIND.findall(response["description"]))
        for status, response in responses.items()
        if "application/problem+json" in response.get("content", {})
    }


def documented(document: dict) -> set[str]:
    return {
        kind
        for path, methods in document["paths"].items()
        for method in methods
        for found in kinds(document, method, path).values()
        for kind in found
    }


def catalogue(module: ModuleType) -> set[str]:
    return {value.kind for value in vars(module).values() if isinstance(value, ProblemType)}


async def test_publishing_documents_its_idempotency_problems(streaming_app):
    found = kinds(await openapi(streaming_app), "post", "/v1/events")
    assert {"idempotency-key-required", "idempotency-key-invalid", "invalid-request"} <= found[400]
    assert {"unauthenticated", "invalid-token"} <= found[401]
    assert found[403] == {"event-type-not-allowed"}
    assert {"payload-too-large", "body-too-large"} <= found[413]
    assert "idempotency-key-reused" in found[422]


async def test_the_stream_documents_that_it_may_be_unavailable(streaming_app):
    found = kinds(await openapi(streaming_app), "get", "/v1/events/stream")
    assert "stream-unavailable" in found[503] and "invalid-request" in found[400]
    assert {"unauthenticated", "invalid-token"} <= found[401]


async def test_refreshing_documents_refresh_token_reuse(users_app):
    found = kinds(await openapi(users_app), "post", "/v1/auth/refresh")
    assert {"invalid-refresh-token", "refresh-token-reused"} <= found[401]


@pytest.mark.parametrize(
    "app,module", [("streaming_app", streaming_problems), ("users_app", users_problems)], ids=["streaming", "users"]
)
async def test_every_kind_in_a_service_catalogue_is_documented_on_some_route(request, app, module):
    document = await openapi(request.getfixturevalue(app))
    assert catalogue(module) <= documented(document)


async def test_every_route_of_the_notification_service_documents_its_problems(notifications_app):
    document = await openapi(notifications_app)
    for path, methods in document["paths"].items():
        for method in methods:
            assert kinds(document, method, path), f"{method.upper()} {path} documents no problem"
