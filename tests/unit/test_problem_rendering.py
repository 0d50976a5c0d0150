"""Every error is RFC 9457 problem+json: how a problem renders, how routes document the problems they
may answer with, and how the handlers every service installs turn failures into problems."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError

from prognetwork.kit.problems import (
    DEPENDENCY_UNAVAILABLE,
    INVALID_REQUEST,
    INVALID_TOKEN,
    MEDIA_TYPE,
    PROBLEM_BASE,
    UNAUTHENTICATED,
    Problem,
    ProblemType,
    install,
    problem_response,
    problem_responses,
)
from tests.helpers.problems import assert_problem

TEAPOT = ProblemType(418, "teapot", "The server is a teapot")


def rendered(response) -> dict:
    return json.loads(response.body)


# --- problem_response and ProblemType ---------------------------------------------------------


def test_a_problem_of_a_declared_kind_renders_its_type_uri_title_status_detail_and_instance():
    response = problem_response(401, "The token expired.", kind="invalid-token", title="The access token is not valid",
                                instance="/v1/users/me")
    assert response.status_code == 401 and response.media_type == MEDIA_TYPE
    assert response.headers["content-type"] == MEDIA_TYPE
    assert rendered(response) == {"type": PROBLEM_BASE + "invalid-token", "title": "The access token is not valid",
                                  "status": 401, "detail": "The token expired.", "instance": "/v1/users/me"}


def test_a_problem_without_a_kind_is_about_blank_titled_by_its_status():
    body = rendered(problem_response(404, "No resource at /x."))
    assert body == {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "No resource at /x."}


def test_extensions_become_members_of_the_body_and_headers_are_sent():
    response = problem_response(429, "Slow down.", kind="rate-limited", headers={"Retry-After": "7"}, retry_in=7,
                                errors=[{"field": "x"}])
    body = rendered(response)
    assert body["retry_in"] == 7 and body["errors"] == [{"field": "x"}]
    assert response.headers["retry-after"] == "7"


def test_calling_a_problem_type_makes_the_problem_to_raise_with_its_declared_status_kind_and_title():
    problem = TEAPOT("No coffee here.", headers={"X-Pot": "1"}, brew="tea")
    assert isinstance(problem, Problem)
    assert (problem.status, problem.kind, problem.title, problem.detail) == (
        418, "teapot", "The server is a teapot", "No coffee here.")
    assert problem.headers == {"X-Pot": "1"} and problem.extensions == {"brew": "tea"}
    assert str(problem) == "No coffee here."


# --- problem_responses (OpenAPI) --------------------------------------------------------------


def test_documented_responses_always_include_invalid_input_and_an_unavailable_dependency():
    responses = problem_responses()
    assert list(responses) == [422, 503]
    assert responses[422]["description"] == f"{INVALID_REQUEST.title} (invalid-request)"
    assert responses[503]["description"] == f"{DEPENDENCY_UNAVAILABLE.title} (dependency-unavailable)"


def test_documented_responses_are_by_status_in_order_each_listing_its_kinds_once():
    responses = problem_responses(TEAPOT, INVALID_TOKEN, UNAUTHENTICATED, INVALID_TOKEN, INVALID_REQUEST)
    assert list(responses) == [401, 418, 422, 503]
    # In the order the route lists them, each once.
    assert responses[401]["description"] == (
        "The access token is not valid (invalid-token); An access token is required (unauthenticated)")
    assert responses[422]["description"].count("invalid-request") == 1


def test_every_documented_response_is_problem_json_with_the_required_members():
    for response in problem_responses(TEAPOT).values():
        (media_type,) = response["content"]
        schema = response["content"][media_type]["schema"]
        assert media_type == MEDIA_TYPE
        assert schema["required"] == ["type", "title", "status", "detail"]
        assert set(schema["properties"]) >= {"type", "title", "status", "detail", "instance"}


# --- the installed handlers -------------------------------------------------------------------


class Signup(BaseModel):
    email: str
    name: str = Field(min_length=1)
    age: int


class Wide(BaseModel):
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int
    g: int


def app_with_handlers() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.post("/signup")
    async def signup(body: Signup) -> dict:
        return {}

    @app.post("/wide")
    async def wide(body: Wide) -> dict:
        return {}

    @app.get("/teapot")
    async def teapot() -> dict:
        raise TEAPOT("No coffee here.", headers={"X-Pot": "1"}, brew="tea")

    @app.get("/cache-down")
    async def cache_down() -> dict:
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    @app.get("/socket-down")
    async def socket_down() -> dict:
        raise ConnectionRefusedError("connection refused")

    @app.get("/bug")
    async def bug() -> dict:
        raise RuntimeError("secret internals")

    return app


@pytest.fixture
async def client():
    # The 500 handler answers, then Starlette re-raises for the server to log: take the answer.
    transport = httpx.ASGITransport(app=app_with_handlers(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        yield client


async def test_a_raised_problem_is_answered_as_declared_with_the_request_path_as_instance(client):
    response = await client.get("/teapot")
    body = assert_problem(response, 418, "teapot")
    assert body == {"type": PROBLEM_BASE + "teapot", "title": "The server is a teapot", "status": 418,
                    "detail": "No coffee here.", "instance": "/teapot", "brew": "tea"}
    assert response.headers["x-pot"] == "1"


async def test_invalid_fields_are_summarised_in_the_detail_and_listed_without_the_body_prefix(client):
    response = await client.post("/signup", json={"name": "", "age": "old"})
    body = assert_problem(response, 422, "invalid-request")
    assert [error["field"] for error in body["errors"]] == ["email", "name", "age"]
    assert body["detail"].startswith("The request is invalid: email: Field required; name: ")
    assert "age: Input should be a valid integer" in body["detail"]


async def test_the_summary_names_the_body_itself_when_the_body_is_the_wrong_shape(client):
    body = assert_problem(await client.post("/signup", json=["not", "an", "object"]), 422, "invalid-request")
    assert body["errors"][0]["field"] == ""
    assert body["detail"].startswith("The request is invalid: body: ")


async def test_the_summary_stops_at_five_fields_while_the_list_keeps_every_one(client):
    body = assert_problem(await client.post("/wide", json={}), 422, "invalid-request")
    assert [error["field"] for error in body["errors"]] == list("abcdefg")
    summarised = body["detail"].removeprefix("The request is invalid: ").split("; ")
    assert [part.split(":")[0] for part in summarised] == list("abcde")


async def test_a_body_that_is_not_json_is_a_400_without_a_field_list(client):
    response = await client.post("/signup", content=b'{"email": ', headers={"content-type": "application/json"})
    body = assert_problem(response, 400, "invalid-request")
    assert body["detail"] == "The request body is not valid JSON." and "errors" not in body


async def test_unknown_paths_and_methods_are_problems_that_name_the_path(client):
    missing = assert_problem(await client.get("/nowhere"), 404)
    assert (missing["type"], missing["detail"]) == ("about:blank", "No resource at /nowhere.")
    wrong_method = assert_problem(await client.delete("/signup"), 405)
    assert wrong_method["detail"] == "DELETE is not allowed on /signup."


@pytest.mark.parametrize("path", ["/cache-down", "/socket-down"])
async def test_an_unreachable_dependency_is_a_503_to_retry_never_a_500(client, path):
    response = await client.get(path)
    body = assert_problem(response, 503, "dependency-unavailable")
    assert response.headers["retry-after"] == "5"
    assert "127.0.0.1" not in body["detail"]


async def test_an_unexpected_error_is_a_500_that_reveals_nothing_of_it(client):
    response = await client.get("/bug")
    body = assert_problem(response, 500)
    assert body["detail"] == "An unexpected error occurred; it has been logged."
    assert "secret" not in response.text
