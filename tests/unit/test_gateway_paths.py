"""The gateway's path rules: a raw request path is refused, or it reaches its route's upstream and nothing else."""

from __future__ import annotations

import random

import pytest
from yarl import URL

from prognetwork.gateway.proxy import (
    CompiledRoute,
    compile_routes,
    match,
    normalise_path,
    upstream_target,
    upstream_url,
)
from prognetwork.gateway.settings import GatewaySettings, Route
from prognetwork.kit.problems import Problem

# Upstreams with a host name, an IPv6 address, explicit and default ports and a base path, so
# a URL that took any of its authority or base from the request could not pass for one of them.
UPSTREAMS = {
    "user-service": "http://users.internal:3007",
    "event-streaming": "http://[::1]:8001/stream-base/",
    "notification-service": "https://notify.internal",
}
CANARY = "127.0.0.1:9999"


@pytest.fixture(scope="module")
def routes() -> list[CompiledRoute]:
    return compile_routes(GatewaySettings(PROG_ENV="development", GATEWAY_UPSTREAMS=UPSTREAMS))


def resolve(routes: list[CompiledRoute], raw: bytes, query: bytes = b"") -> tuple[CompiledRoute, URL] | None:
    """What the gateway does with a request line's path: route it (None: no route) or raise a Problem."""
    path = normalise_path(raw)
    route = match(routes, path)
    if route is None:
        return None
    url = upstream_url(route, path, query)
    # What goes on the request line is exactly that URL's path and query.
    assert upstream_target(route, path, query) == url.raw_path_qs.encode("latin-1")
    return route, url


def assert_confined(route: CompiledRoute, url: URL) -> None:
    configured = URL(UPSTREAMS[route.upstream])
    assert (url.scheme, url.host, url.port) == (configured.scheme, configured.host, configured.port)
    assert url.raw_path == route.upstream_prefix or url.raw_path.startswith(route.upstream_prefix.rstrip("/") + "/")
    assert "//" not in url.raw_path


REFUSED = {
    # the penetration test's report: an authority smuggled in by encoded slashes
    b"/api%2fv1%2fauth%2flogin%2f@127.0.0.1:9999/anything": "slash",
    b"/api%2Fv1%2Fevents": "slash",
    b"/api/v1/users/..%2f..%2fmetrics": "slash",
    b"/api/v1/users/..%2F..%2Fmetrics": "slash",
    b"/api/v1/auth/login%2F@127.0.0.1:9999": "slash",
    b"/api/v1/users/%5c..%5cmetrics": "backslash",
    b"/api/v1/users/%5C%5C127.0.0.1:9999": "backslash",
    b"/api/v1/users\\..\\metrics": "backslash",
    b"/api/v1/auth/login\\@127.0.0.1:9999": "backslash",
    b"/api/v1/users/../../metrics": "dot segment",
    b"/api/v1/users/..": "dot segment",
    b"/api/v1/users/./me": "dot segment",
    b"/api/v1/users/%2e%2e/%2E%2E/metrics": "dot segment",
    b"/api/v1/users/.%2E/metrics": "dot segment",
    b"/api/v1/users/%2e/me": "dot segment",
    b"/api/v1/users/..;/metrics": "dot segment",
    b"/api/v1/users/.%2e%3bx/metrics": "dot segment",
    b"/api/v1/users/...": "dot segment",
    b"/api/v1/users/..%20": "dot segment",
    b"/api/v1/users/%252f": "%25",
    b"/api/v1/users/%252e%252e/metrics": "%25",
    b"/api/v1/users/%25": "%25",
    b"/api/v1/users/%c0%af": "UTF-8",
    b"/api/v1/users/%e0%80%af": "UTF-8",
    b"/api/v1/users/%c0%ae%c0%ae/metrics": "UTF-8",
    b"/api/v1/users/%ed%a0%80": "UTF-8",
    b"/api/v1/users/%ff": "UTF-8",
    b"/api/v1/users/caf%c3": "UTF-8",
    b"/api/v1/users/me%00": "control",
    b"/api/v1/users/me%0d%0aX-Injected:%201": "control",
    b"/api/v1/users/me%7F": "control",
    b"/api/v1/users/%c2%85": "control",
    b"/api/v1/users/me\x00": "control",
    b"/api/v1/users/%ef%bc%8f..": "NFKC",  # fullwidth solidus
    b"/api/v1/users/%ef%bc%8e%ef%bc%8e": "NFKC",  # fullwidth full stops
    b"/api/v1/users/%e2%80%a5": "NFKC",  # two dot leader
    b"/api/v1/users/%ef%bc%bc": "NFKC",  # fullwidth reverse solidus
    b"//127.0.0.1:9999/anything": "empty segment",
    b"/api/v1/auth/login//127.0.0.1:9999/x": "empty segment",
    b"/api/v1/users//me": "empty segment",
    b"/api/v1/users/%zz": "hex digits",
    b"/api/v1/users/%4": "hex digits",
    b"/api/v1/users/%": "hex digits",
    b"api/v1/users/me": "start with '/'",
    b"@127.0.0.1:9999/api/v1/users": "start with '/'",
    b"*": "start with '/'",
    b"": "start with '/'",
    b"/api/v1/users/caf\xc3\xa9": "non-ASCII",
    b"/api/v1/users/a b": "' '",
    b"/api/v1/users/<script>": "'<'",
    b"/api/v1/users/me?x=1": "'?'",
    b"/api/v1/users/me#x": "'#'",
}


@pytest.mark.parametrize("raw", REFUSED, ids=[r.decode("latin-1") or "empty" for r in REFUSED])
def test_ambiguous_paths_are_refused_with_a_400_that_says_why(routes, raw):
    with pytest.raises(Problem) as refused:
        resolve(routes, raw)
    assert refused.value.status == 400 and refused.value.kind == "invalid-path"
    assert REFUSED[raw].lower() in refused.value.detail.lower()


ACCEPTED = {
    # raw path: (route prefix, upstream URL) — or None when no route matches (the gateway's own 404)
    b"/api/v1/users/me": ("/api/v1/users", "http://users.internal:3007/v1/users/me"),
    b"/api/v1/users/": ("/api/v1/users", "http://users.internal:3007/v1/users/"),
    b"/api/v1/users": ("/api/v1/users", "http://users.internal:3007/v1/users"),
    b"/%61pi/v1/auth/login": ("/api/v1/auth/login", "http://users.internal:3007/v1/auth/login"),
    b"/%61%70%69/%76%31/auth/logi%6E": ("/api/v1/auth/login", "http://users.internal:3007/v1/auth/login"),
    b"/api/v1/auth/login/@evil:1/x": ("/api/v1/auth/login", "http://users.internal:3007/v1/auth/login/@evil:1/x"),
    b"/api/v1/auth/login/@127.0.0.1:9999": (
        "/api/v1/auth/login", "http://users.internal:3007/v1/auth/login/@127.0.0.1:9999"),
    b"/api/v1/users/%40127.0.0.1%3a9999": ("/api/v1/users", "http://users.internal:3007/v1/users/%40127.0.0.1%3A9999"),
    b"/api/v1/users/me%3fx=1%23y": ("/api/v1/users", "http://users.internal:3007/v1/users/me%3Fx=1%23y"),
    b"/api/v1/users/caf%c3%a9": ("/api/v1/users", "http://users.internal:3007/v1/users/caf%C3%A9"),
    b"/api/v1/users/.profile": ("/api/v1/users", "http://users.internal:3007/v1/users/.profile"),
    b"/api/v1/users/..x": ("/api/v1/users", "http://users.internal:3007/v1/users/..x"),
    b"/api/v1/users/a%2Eb": ("/api/v1/users", "http://users.internal:3007/v1/users/a.b"),
    b"/api/v1/events/stream": ("/api/v1/events/stream", "http://[::1]:8001/stream-base/v1/events/stream"),
    b"/api/v1/events/echo;x=1": ("/api/v1/events", "http://[::1]:8001/stream-base/v1/events/echo;x=1"),
    b"/api/v1/dev/outbox": ("/api/v1/dev", "https://notify.internal/v1/dev/outbox"),
    b"/.well-known/jwks.json": ("/.well-known/jwks.json", "http://users.internal:3007/.well-known/jwks.json"),
    b"/.well-known/jwks.json/x": ("/.well-known/jwks.json", "http://users.internal:3007/.well-known/jwks.json/x"),
    b"/API/v1/users/me": None,  # paths are case-sensitive: no route, so no upstream
    b"/api/v1/usersx": None,
    b"/api/v1/users:9999/x": None,
    b"/api/v1/users%40127.0.0.1:9999": None,
    b"/health": None,
    b"/": None,
}


@pytest.mark.parametrize("raw", ACCEPTED, ids=[r.decode() for r in ACCEPTED])
def test_accepted_paths_reach_their_route_upstream_under_its_prefix(routes, raw):
    resolved = resolve(routes, raw)
    expected = ACCEPTED[raw]
    if expected is None:
        assert resolved is None
        return
    route, url = resolved
    assert (route.prefix, str(url)) == expected
    assert_confined(route, url)


def test_the_canonical_form_is_its_own_canonical_form():
    for raw in ACCEPTED:
        once = normalise_path(raw)
        assert normalise_path(once.encode()) == once


def test_the_query_is_forwarded_as_sent_and_cannot_move_the_authority(routes):
    query = b"next=//127.0.0.1:9999/x&to=@127.0.0.1:9999&p=%2F..%2F&h=http://127.0.0.1:9999/#frag"
    route, url = resolve(routes, b"/api/v1/auth/login", query)
    assert_confined(route, url)
    assert url.raw_path == "/v1/auth/login" and url.raw_query_string == query.decode()
    assert url.raw_path_qs == "/v1/auth/login?" + query.decode()


HOSTILE_PIECES = [
    "api", "v1", "users", "auth", "login", "events", "stream", ".well-known", "jwks.json", "x", "",
    ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%25", "%252f", "%00", "%0a", "%c0%af",
    "%e0%80%af", "%ef%bc%8f", "%c3%a9", "%ff", "%", "%2", "@", CANARY, "%40", ":", "%3a", ";", "%3b",
    "%61", "%61pi", "?", "#", "%3f", "http:", "~", "%7e", " ",
]


def test_random_hostile_paths_never_escape_their_route(routes):
    """Whatever the pieces, the answer is a 400, no route, or a URL confined to the matched route."""
    rng = random.Random(20240917)
    outcomes = {"refused": 0, "unrouted": 0, "forwarded": 0}
    for _ in range(4000):
        pieces = rng.choices(HOSTILE_PIECES, k=rng.randint(1, 7))
        separators = rng.choices(["/", "/", "/", "", "%2f", "//"], k=len(pieces))
        raw = "".join(s + p for s, p in zip(separators, pieces, strict=True)).encode("latin-1")
        if rng.random() < 0.5:
            raw = b"/api/v1/" + raw.lstrip(b"/")
        try:
            resolved = resolve(routes, raw, b"q=@" + CANARY.encode())
        except Problem as problem:
            assert problem.status == 400 and problem.kind == "invalid-path", raw
            outcomes["refused"] += 1
            continue
        if resolved is None:
            outcomes["unrouted"] += 1
            continue
        route, url = resolved
        assert_confined(route, url)
        assert url.raw_path_qs.endswith("?q=@" + CANARY)
        path = normalise_path(raw)
        assert normalise_path(path.encode()) == path
        outcomes["forwarded"] += 1
    assert all(outcomes.values()), outcomes  # the corpus exercised every outcome


def test_a_strip_prefix_applies_only_at_a_segment_boundary():
    routes = [Route(prefix="/apiary/v1", upstream="user-service", strip_prefix="/api"),
              Route(prefix="/api", upstream="user-service", strip_prefix="/api/")]
    compiled = compile_routes(GatewaySettings(PROG_ENV="development", GATEWAY_UPSTREAMS=UPSTREAMS, GATEWAY_ROUTES=routes))
    route, url = resolve(compiled, b"/apiary/v1/hives")
    assert url.raw_path == "/apiary/v1/hives"
    route, url = resolve(compiled, b"/api")
    assert url.raw_path == "/" and route.upstream_prefix == "/"
    route, url = resolve(compiled, b"/api/v1/x")
    assert url.raw_path == "/v1/x"


@pytest.mark.parametrize(("upstream", "prefix", "complaint"), [
    ("http://user:secret@users.internal:3007", "/api/v1/users", "without credentials"),
    ("ftp://users.internal", "/api/v1/users", "http(s)"),
    ("http://users.internal:3007/?next=/", "/api/v1/users", "query"),
    ("http:///nohost", "/api/v1/users", "http(s)"),
    ("http://users.internal:3007/a/%00", "/api/v1/users", "control"),
    ("http://users.internal:3007/a%2Fb", "/api/v1/users", "slash"),
    ("http://users.internal:3007", "/api/../admin", "dot segment"),
    ("http://users.internal:3007", "/api/v1/%2fadmin", "slash"),
    ("http://users.internal:3007", "/%61pi/v1/users", "canonical form"),
])
def test_configuration_that_could_break_the_invariant_stops_the_start(upstream, prefix, complaint):
    settings = GatewaySettings(PROG_ENV="development", GATEWAY_UPSTREAMS={"user-service": upstream},
                        GATEWAY_ROUTES=[Route(prefix=prefix, upstream="user-service")])
    with pytest.raises(ValueError) as refused:
        compile_routes(settings)
    assert complaint.lower() in str(refused.value).lower()
