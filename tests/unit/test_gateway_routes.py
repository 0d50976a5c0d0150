"""The gateway's route table: the first route whose prefix matches wins, prefixes match whole
segments, and the development-only routes exist in development alone."""

from __future__ import annotations

import pytest

from prognetwork.gateway.proxy import CompiledRoute, compile_routes, match
from prognetwork.gateway.settings import GatewaySettings, Route


def table(env: str = "development", routes: list[Route] | None = None, **settings) -> list[CompiledRoute]:
    if routes is not None:
        settings["GATEWAY_ROUTES"] = routes
    return compile_routes(GatewaySettings(PROG_ENV=env, **settings))


def prefix_for(routes: list[CompiledRoute], path: str) -> str | None:
    route = match(routes, path)
    return None if route is None else route.prefix


def test_the_first_matching_route_wins_even_over_a_longer_prefix_listed_after_it():
    routes = table(routes=[Route(prefix="/api/v1", upstream="user-service"),
                           Route(prefix="/api/v1/events", upstream="event-streaming")])
    assert match(routes, "/api/v1/events/stream").upstream == "user-service"


def test_a_catch_all_listed_last_takes_only_what_no_earlier_route_matched():
    routes = table(routes=[Route(prefix="/api/v1/events", upstream="event-streaming"),
                           Route(prefix="/", upstream="user-service", public=True)])
    assert match(routes, "/api/v1/events/x").upstream == "event-streaming"
    assert match(routes, "/anything/else").upstream == "user-service"
    assert match(routes, "/").upstream == "user-service"


@pytest.mark.parametrize(("path", "prefix", "public", "limit"), [
    ("/api/v1/auth/login", "/api/v1/auth/login", True, "auth"),
    ("/api/v1/auth/login/", "/api/v1/auth/login", True, "auth"),
    ("/api/v1/auth/refresh", "/api/v1/auth/refresh", True, "auth"),
    ("/api/v1/auth/password-reset/confirm", "/api/v1/auth/password-reset", True, "auth"),
    # Not a public route's segment: it falls through to the protected prefix listed after them.
    ("/api/v1/auth/logout", "/api/v1/auth", False, "default"),
    ("/api/v1/auth/loginx", "/api/v1/auth", False, "default"),
    ("/api/v1/auth/sessions/current", "/api/v1/auth", False, "default"),
    ("/.well-known/jwks.json", "/.well-known/jwks.json", True, "anonymous"),
])
def test_public_auth_routes_are_listed_before_the_protected_auth_prefix(path, prefix, public, limit):
    route = match(table(), path)
    assert (route.prefix, route.public, route.limit) == (prefix, public, limit)


def test_the_stream_route_precedes_the_events_prefix_and_alone_has_no_read_timeout():
    routes = table(UPSTREAM_TIMEOUT_SECONDS="7")
    stream, streams, events = (match(routes, path) for path in
                               ("/api/v1/events/stream", "/api/v1/events/streams", "/api/v1/events/42"))
    assert (stream.prefix, stream.stream, stream.timeouts.read) == ("/api/v1/events/stream", True, None)
    # Its headers must still come in time, even though its body may last for hours.
    assert stream.timeouts.head == 7.0
    assert streams is events
    assert (events.prefix, events.stream, events.timeouts.read) == ("/api/v1/events", False, 7.0)


@pytest.mark.parametrize(("path", "prefix"), [
    ("/api/v1/users", "/api/v1/users"),
    ("/api/v1/users/", "/api/v1/users"),
    ("/api/v1/users/me", "/api/v1/users"),
    ("/api/v1/usersettings", None),
    ("/api/v1", None),
    ("/api", None),
    ("/.well-known/jwks.json", "/.well-known/jwks.json"),
    ("/.well-known/jwks.jsonx", None),
    ("/.well-known", None),
])
def test_a_prefix_matches_itself_exactly_or_as_whole_leading_segments(path, prefix):
    assert prefix_for(table(), path) == prefix


def test_a_prefix_written_with_a_trailing_slash_matches_as_if_written_without():
    routes = table(routes=[Route(prefix="/api/v1/things/", upstream="user-service")])
    assert [prefix_for(routes, p) for p in ("/api/v1/things", "/api/v1/things/1", "/api/v1/thingsx")] == [
        "/api/v1/things", "/api/v1/things", None]


def test_routes_are_labelled_in_metrics_by_template_not_by_the_requested_path():
    routes = table()
    assert match(routes, "/api/v1/users/me").path == "/api/v1/users/*"
    assert match(routes, "/api/v1/users/7f0c/avatar").path == "/api/v1/users/*"
    assert match(routes, "/.well-known/jwks.json").path == "/.well-known/jwks.json"


def test_the_development_outbox_route_is_there_in_development_only():
    route = match(table("development"), "/api/v1/dev/outbox")
    assert (route.upstream, route.public, route.limit) == ("notification-service", True, "anonymous")
    for env in ("staging", "production"):
        assert match(table(env), "/api/v1/dev/outbox") is None, env
        assert prefix_for(table(env), "/api/v1/users/me") == "/api/v1/users", env


def test_a_route_table_given_explicitly_is_used_as_given_even_in_development():
    routes = table("development", routes=[Route(prefix="/api/v1/users", upstream="user-service")])
    assert [route.prefix for route in routes] == ["/api/v1/users"]
    assert match(routes, "/api/v1/dev/outbox") is None


def test_no_route_means_no_upstream():
    assert match(table(), "/metrics") is None
    assert match([], "/api/v1/users/me") is None
