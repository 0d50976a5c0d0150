"""The API gateway as a real process, in front of a real user service and a stub upstream."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
import uuid

import jwt
import pytest
import redis as redis_sync
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis as AsyncRedis

from prognetwork.gateway.ratelimit import lease_size
from prognetwork.gateway.settings import DEFAULT_RATE_LIMITS
from prognetwork.users.keys import generate_pem, load_key
from tests.helpers.accounts import unique_email
from tests.helpers.databases import DisposableRedis
from tests.helpers.http import http_status, http_text, request_json
from tests.helpers.polling import eventually
from tests.helpers.processes import issuer_env, start_service
from tests.helpers.stub_upstream import ClosingUpstream, StubUpstream
from tests.helpers.tokens import bearer, mint

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"


@pytest.fixture
def stub():
    upstream = StubUpstream()
    yield upstream
    upstream.close()


@pytest.fixture
def gateway_env(service_env, users, stub) -> dict[str, str]:
    return {**service_env, **issuer_env(users.url), "EVENT_STREAMING_URL": stub.url, "UPSTREAM_TIMEOUT_SECONDS": "1"}


@pytest.fixture
def gateway(gateway_env, tmp_path):
    process = start_service("api-gateway", gateway_env, tmp_path)
    yield process
    process.stop()


def register_and_login(gateway_url: str, database_url: str) -> dict:
    """The README's flow, entirely through the gateway."""
    import asyncio

    import asyncpg

    email = unique_email("gw")
    status, user = request_json("POST", f"{gateway_url}/api/v1/auth/register",
                                {"email": email, "password": PASSWORD, "name": "Via Gateway"})
    assert status == 202, user

    async def token() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            payload = await conn.fetchval(
                "SELECT payload FROM events WHERE type = 'user.email_verification_requested' AND payload->>'email' = $1",
                email)
        finally:
            await conn.close()
        return json.loads(payload)["token"]

    from tests.helpers.threads import in_thread

    status, _ = request_json("POST", f"{gateway_url}/api/v1/auth/verify-email", {"token": in_thread(asyncio.run, token()), "password": PASSWORD})
    assert status == 200
    status, tokens = request_json("POST", f"{gateway_url}/api/v1/auth/login", {"email": email, "password": PASSWORD})
    assert status == 200, tokens
    return {"email": email, **tokens}


def test_readme_flow_runs_entirely_through_the_gateway(gateway, database_url):
    session = register_and_login(gateway.url, database_url)
    status, me = request_json("GET", f"{gateway.url}/api/v1/users/me", headers=bearer(session["access_token"]))
    assert status == 200 and me["email"] == session["email"]
    status, refreshed = request_json("POST", f"{gateway.url}/api/v1/auth/refresh",
                                     {"refresh_token": session["refresh_token"]})
    assert status == 200 and refreshed["refresh_token"] != session["refresh_token"]
    status, jwks = request_json("GET", f"{gateway.url}/.well-known/jwks.json")
    assert status == 200 and jwks["keys"][0]["alg"] == "EdDSA"
    # Logout is not public: it needs the access token at the gateway.
    assert request_json("POST", f"{gateway.url}/api/v1/auth/logout", {"refresh_token": refreshed["refresh_token"]})[0] == 401
    assert request_json("POST", f"{gateway.url}/api/v1/auth/logout", {"refresh_token": refreshed["refresh_token"]},
                        headers=bearer(refreshed["access_token"]))[0] == 204


def test_password_reset_needs_no_access_token_at_the_gateway(gateway, database_url):
    # Whoever forgot their password has no token: both steps are public routes (rate-limited as auth).
    session = register_and_login(gateway.url, database_url)
    status, answer = request_json("POST", f"{gateway.url}/api/v1/auth/password-reset", {"email": session["email"]})
    assert status == 202 and answer["status"] == "accepted"
    status, problem = request_json("POST", f"{gateway.url}/api/v1/auth/password-reset/confirm",
                                   {"token": "not-a-real-link", "password": "a new passphrase"})
    assert status == 400 and problem["type"].endswith("/invalid-reset-link")


def test_a_signed_out_access_token_stops_working_at_the_gateway(gateway, database_url):
    session = register_and_login(gateway.url, database_url)
    me = f"{gateway.url}/api/v1/users/me"
    assert request_json("GET", me, headers=bearer(session["access_token"]))[0] == 200
    assert request_json("POST", f"{gateway.url}/api/v1/auth/logout", {"refresh_token": session["refresh_token"]},
                        headers=bearer(session["access_token"]))[0] == 204
    # Refused by the gateway itself: the stub behind /api/v1/events never sees the request.
    for url in (me, f"{gateway.url}/api/v1/events"):
        status, problem = request_json("GET", url, headers=bearer(session["access_token"]))
        assert status == 401 and "signed out" in problem["detail"], (url, problem)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_token_verification_at_the_gateway(gateway, stub, signing_key):
    key = load_key(signing_key)
    now = int(time.time())
    base = {"iss": "http://localhost:8000", "aud": "prognetwork", "sub": str(uuid.uuid4()), "iat": now, "nbf": now,
            "exp": now + 300, "jti": uuid.uuid4().hex, "role": "user", "sid": "s"}

    def signed(body: dict, private=key.private, kid=key.kid) -> str:
        return jwt.encode(body, private, algorithm="EdDSA", headers={"kid": kid})

    valid = signed(base)
    assert request_json("GET", f"{gateway.url}/api/v1/events/echo", headers=bearer(valid))[0] == 200
    import hashlib
    import hmac

    hs_header, hs_payload = b64({"alg": "HS256", "kid": key.kid}), b64(base)
    hs_sig = base64.urlsafe_b64encode(hmac.new(key.jwk["x"].encode(), f"{hs_header}.{hs_payload}".encode(),
                                               hashlib.sha256).digest()).rstrip(b"=").decode()
    cases = {
        "expired": signed({**base, "exp": now - 60, "iat": now - 900, "nbf": now - 900}),
        "wrong audience": signed({**base, "aud": "other"}),
        "wrong issuer": signed({**base, "iss": "https://evil.example"}),
        "forged signature": signed(base, private=Ed25519PrivateKey.generate()),
        "unknown kid": signed(base, private=Ed25519PrivateKey.generate(), kid="not-a-known-kid"),
        "alg none": f"{b64({'alg': 'none', 'kid': key.kid})}.{b64(base)}.",
        "HS256 with the public key": f"{hs_header}.{hs_payload}.{hs_sig}",
        "not a jwt": "abc.def",
    }
    before = len(stub.state.requests)
    for name, token in cases.items():
        status, problem = request_json("GET", f"{gateway.url}/api/v1/events/echo", headers=bearer(token))
        assert status == 401, f"{name}: {status}"
        assert problem["type"].endswith("/invalid-token"), name
    status, problem = request_json("GET", f"{gateway.url}/api/v1/events/echo")
    assert status == 401 and problem["type"].endswith("/unauthenticated")
    assert len(stub.state.requests) == before  # nothing unauthenticated reached the upstream


def test_key_rotation_is_picked_up_on_unknown_kid(gateway, secrets_dir, signing_key, database_url):
    old = register_and_login(gateway.url, database_url)
    new_pem = generate_pem()
    (secrets_dir / "JWT_SIGNING_KEYS").write_text(new_pem + "\n" + signing_key)
    fresh = register_and_login(gateway.url, database_url)
    assert jwt.get_unverified_header(fresh["access_token"])["kid"] == load_key(new_pem).kid
    # The gateway has never seen this kid: it refetches the key set once and accepts the token.
    assert request_json("GET", f"{gateway.url}/api/v1/users/me", headers=bearer(fresh["access_token"]))[0] == 200
    assert request_json("GET", f"{gateway.url}/api/v1/users/me", headers=bearer(old["access_token"]))[0] == 200


def test_identity_headers_cannot_be_forged_and_hop_by_hop_are_stripped(gateway, signing_key):
    sub = str(uuid.uuid4())
    token = mint(signing_key, sub)
    status, seen = request_json("POST", f"{gateway.url}/api/v1/events/echo?x=1&y=%2F", {"hello": "world"}, headers={
        **bearer(token), "X-Prog-User-Id": "forged-admin", "x-prog-user-role": "admin", "X-Prog-Tenant-Id": "t",
        "X-Forwarded-For": "203.0.113.9", "Proxy-Authorization": "Basic secret", "TE": "trailers",
        "X-Request-ID": "client-chosen-id-1",
    })
    assert status == 200
    headers: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        headers.setdefault(name, []).append(value)
    assert headers["x-prog-user-id"] == [sub] and headers["x-prog-user-role"] == ["user"]
    assert "x-prog-tenant-id" not in headers  # the token carries no tenant; the forged one is gone
    assert "proxy-authorization" not in headers and "te" not in headers
    # No proxy is trusted (FORWARDED_ALLOW_IPS unset): the client's own X-Forwarded-For is replaced
    # by its connection's address.
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-request-id"] == ["client-chosen-id-1"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", headers["traceparent"][0])
    assert seen["path"] == "/v1/events/echo" and seen["query"] == "x=1&y=%2F"
    assert json.loads(seen["body"]) == {"hello": "world"}


def test_security_headers_and_request_id_on_responses(gateway):
    import urllib.request

    with urllib.request.urlopen(f"{gateway.url}/.well-known/jwks.json", timeout=5) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        assert response.headers.get_all("x-request-id") and len(response.headers.get_all("x-request-id")) == 1
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" in headers and int(headers["ratelimit-limit"]) > 0


def test_rate_limit_is_shared_by_two_gateway_processes(gateway_env, tmp_path, redis_url):
    limits = {"auth": {"requests": 100, "window_seconds": 60}, "default": {"requests": 100, "window_seconds": 60},
              "anonymous": {"requests": 6, "window_seconds": 60}}
    env = {**gateway_env, "GATEWAY_RATE_LIMITS": json.dumps(limits)}
    redis_sync.Redis.from_url(redis_url).delete("rl:anonymous:a:127.0.0.1")
    first = start_service("api-gateway", env, tmp_path)
    second = start_service("api-gateway", env, tmp_path)
    try:
        statuses = [http_status(f"{g.url}/.well-known/jwks.json") for g in [first, second] * 3]
        assert statuses == [200] * 6
        status, problem = request_json("GET", f"{second.url}/.well-known/jwks.json")
        assert status == 429 and problem["type"].endswith("/rate-limited")
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{first.url}/.well-known/jwks.json", timeout=5)
        assert 0 < int(refused.value.headers["Retry-After"]) <= 60
        assert refused.value.headers["RateLimit-Remaining"] == "0"
    finally:
        first.stop()
        second.stop()


def test_redis_outage_fails_open_for_reads_and_closed_for_writes(gateway_env, tmp_path):
    redis = DisposableRedis(tmp_path)
    gateway = start_service("api-gateway", {**gateway_env, "REDIS_URL": redis.url}, tmp_path)
    try:
        assert http_status(f"{gateway.url}/.well-known/jwks.json") == 200
        redis.stop()
        # Reads: served, unlimited — first from the lease reserved before the outage (those hits
        # were counted in Redis), then without Redis at all.
        reads = lease_size(DEFAULT_RATE_LIMITS["anonymous"].requests) + 1
        assert [http_status(f"{gateway.url}/.well-known/jwks.json") for _ in range(reads)] == [200] * reads
        status, problem = request_json("POST", f"{gateway.url}/api/v1/auth/login",
                                       {"email": "x@example.com", "password": "whatever you like"})
        assert status == 503 and problem["type"].endswith("/rate-limiter-unavailable")
        # Degraded, not unready: every gateway replica would be as degraded, and pulling them all
        # from the load balancer would turn fewer guarantees into no service (kit.dependencies).
        eventually(lambda: request_json("GET", f"{gateway.ops_url}/health")[1]["status"] == "degraded",
                   what="/health to report Redis down")
        assert http_status(f"{gateway.ops_url}/readiness") == 200
        metrics = http_text(f"{gateway.ops_url}/metrics")
        assert 'dependency_up{dependency="redis",service="api-gateway"} 0.0' in metrics
        assert re.search(r'gateway_ratelimit_unavailable_total\{decision="allowed"\} [1-9]', metrics)
        assert re.search(r'gateway_ratelimit_unavailable_total\{decision="refused"\} [1-9]', metrics)
        redis.start()
        eventually(lambda: request_json("POST", f"{gateway.url}/api/v1/auth/login",
                                        {"email": "x@example.com", "password": "whatever you like"})[0] == 401,
                   what="writes accepted again once Redis is back")
    finally:
        gateway.stop()
        redis.stop()


def test_a_hung_redis_costs_a_bounded_wait_then_fails_fast_and_recovers(gateway_env, tmp_path):
    redis = DisposableRedis(tmp_path)
    gateway = start_service("api-gateway", {**gateway_env, "REDIS_URL": redis.url}, tmp_path)
    try:
        assert http_status(f"{gateway.url}/.well-known/jwks.json") == 200
        redis.hang()
        # Past the lease reserved before, reads need Redis: each is served all the same, and after
        # a few timed-out commands the client's breaker answers for Redis at once (kit.cache).
        reads = lease_size(DEFAULT_RATE_LIMITS["anonymous"].requests) + 1
        assert [http_status(f"{gateway.url}/.well-known/jwks.json") for _ in range(reads)] == [200] * reads

        def read_until_the_breaker_opens() -> bool:
            assert http_status(f"{gateway.url}/.well-known/jwks.json") == 200
            return 'redis_breaker_open{client="api-gateway"} 1.0' in http_text(f"{gateway.ops_url}/metrics")

        eventually(read_until_the_breaker_opens, timeout=30, what="the Redis breaker to open")
        metrics = http_text(f"{gateway.ops_url}/metrics")
        assert re.search(r'redis_breaker_openings_total\{client="api-gateway"\} [1-9]', metrics)
        assert http_status(f"{gateway.ops_url}/readiness") == 200
        status, problem = request_json("POST", f"{gateway.url}/api/v1/auth/login",
                                       {"email": "x@example.com", "password": "whatever you like"})
        assert status == 503 and problem["type"].endswith("/rate-limiter-unavailable")
        redis.resume()
        eventually(lambda: request_json("POST", f"{gateway.url}/api/v1/auth/login",
                                        {"email": "x@example.com", "password": "whatever you like"})[0] == 401,
                   what="writes accepted again once Redis answers")
        assert 'redis_breaker_open{client="api-gateway"} 0.0' in http_text(f"{gateway.ops_url}/metrics")
    finally:
        gateway.stop()
        redis.stop()


def test_upstream_down_is_502_and_slow_is_504(gateway_env, tmp_path, signing_key):
    token = mint(signing_key, "u")
    # A port held bound but not listening: connections are refused, and nobody else can take it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        down = start_service("api-gateway", {**gateway_env, "EVENT_STREAMING_URL": dead_url}, tmp_path)
        try:
            status, problem = request_json("GET", f"{down.url}/api/v1/events/echo", headers=bearer(token))
            assert status == 502 and problem["type"].endswith("/upstream-unavailable")
        finally:
            down.stop()
    # The gateway fixture's upstream timeout is 1 s; the stub's /hang never answers.
    slow = start_service("api-gateway", gateway_env, tmp_path)
    try:
        status, problem = request_json("GET", f"{slow.url}/api/v1/events/hang", headers=bearer(token))
        assert status == 504 and problem["type"].endswith("/upstream-timeout")
    finally:
        slow.stop()


@pytest.mark.parametrize(("method", "keyed"), [("POST", True), ("POST", False), ("GET", False)])
def test_a_request_that_met_a_closed_keep_alive_connection_is_sent_again_only_when_safe(
    gateway_env, tmp_path, signing_key, method, keyed
):
    """A pooled connection the upstream closed as the request arrived (a replica leaving): sent
    once more on a fresh connection when repeating it is safe — an idempotent method, or an
    Idempotency-Key the upstream deduplicates — and otherwise 502, since an upstream that died
    while handling it would look the same."""
    token = mint(signing_key, "u")
    headers = {**bearer(token), **({"Idempotency-Key": uuid.uuid4().hex} if keyed else {})}
    upstream = ClosingUpstream()
    gateway = start_service("api-gateway", {**gateway_env, "EVENT_STREAMING_URL": upstream.url}, tmp_path)
    try:
        statuses = [request_json(method, f"{gateway.url}/api/v1/events/echo", {"n": n}, headers=headers)[0]
                    for n in range(3)]
        counted = re.search(r'gateway_upstream_retries_total\{upstream="event-streaming"\} (\d+)',
                            http_text(f"{gateway.ops_url}/metrics"))
        retries = int(counted.group(1)) if counted else 0
        if method == "GET" or keyed:
            # Each request after the first met its pooled connection closed and went again on a
            # fresh one, which the pool then kept for the next request to meet closed in turn.
            assert (statuses, upstream.answered, upstream.dropped, retries) == ([200] * 3, 3, 2, 2)
        else:
            assert (statuses, upstream.answered, upstream.dropped, retries) == ([200, 502, 200], 2, 1, 0)
    finally:
        gateway.stop()
        upstream.close()


def test_sse_passes_through_unbuffered_and_disconnect_closes_upstream(gateway, stub, signing_key):
    token = mint(signing_key, "u")
    conn = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    conn.sendall(f"GET /api/v1/events/stream HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    received = b""
    while b"data: " not in received:  # the stream never ends: this only passes if events arrive unbuffered
        chunk = conn.recv(4096)
        assert chunk, "connection closed before the first event"
        received += chunk
    assert b"HTTP/1.1 200" in received and b"text/event-stream" in received
    assert stub.state.streams_opened == 1 and stub.state.streams_closed == 0
    conn.close()
    eventually(lambda: stub.state.streams_closed == 1, timeout=10, what="upstream stream closed after client left")


def test_oversized_body_and_unknown_path(gateway):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{gateway.url}/api/v1/auth/register", data=b"x" * (2 << 20), method="POST",
                                     headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as too_big:
        urllib.request.urlopen(request, timeout=10)
    assert too_big.value.code == 413
    status, problem = request_json("GET", f"{gateway.url}/api/v2/nothing")
    assert status == 404 and problem["status"] == 404


def test_gateway_metrics_label_routes_and_upstreams(gateway, database_url):
    session = register_and_login(gateway.url, database_url)
    request_json("GET", f"{gateway.url}/api/v1/users/me", headers=bearer(session["access_token"]))
    metrics = http_text(f"{gateway.ops_url}/metrics")
    assert re.search(r'requests_total\{method="GET",route="/api/v1/users/\*",service="api-gateway",status="200"\}', metrics)
    assert 'gateway_upstream_responses_total{status="200",upstream="user-service"}' in metrics
    assert "gateway_upstream_duration_seconds_bucket" in metrics


def test_a_cached_token_stops_working_at_the_gateway_once_its_session_is_signed_out(gateway, signing_key,
                                                                                      redis_url):
    from prognetwork.kit.revocation import Revocations
    from tests.helpers.threads import in_thread

    # The gateway answers from its copy of the revocation set once it follows it.
    eventually(lambda: "following revocations" in gateway.log(), what="the gateway to follow revocations")
    session_id = uuid.uuid4().hex
    token = mint(signing_key, uuid.uuid4(), sid=session_id)
    url = f"{gateway.url}/api/v1/events/echo"
    # Verified once, then served from the token cache.
    assert [request_json("GET", url, headers=bearer(token))[0] for _ in range(3)] == [200] * 3

    async def sign_out() -> None:
        client = AsyncRedis.from_url(redis_url)
        try:
            await Revocations(client).revoke([session_id], 60)  # as the user service signs a session out
        finally:
            await client.aclose()

    in_thread(asyncio.run, sign_out())
    status, problem = eventually(lambda: (answer := request_json("GET", url, headers=bearer(token)))[0] == 401
                                 and answer, timeout=5, what="the signed-out token to be refused")
    assert "signed out" in problem["detail"]


def test_leased_rate_limits_still_bind_across_two_gateway_processes(gateway_env, tmp_path, redis_url):
    limit = 400
    lease = lease_size(limit)  # each process reserves this many hits at a time
    assert lease > 1
    limits = {"auth": {"requests": 100, "window_seconds": 60}, "default": {"requests": 100, "window_seconds": 60},
              "anonymous": {"requests": limit, "window_seconds": 60}}
    env = {**gateway_env, "GATEWAY_RATE_LIMITS": json.dumps(limits)}
    redis_sync.Redis.from_url(redis_url).delete("rl:anonymous:a:127.0.0.1")
    gateways = [start_service("api-gateway", env, tmp_path), start_service("api-gateway", env, tmp_path)]
    try:
        statuses: list[int | None] = []
        while statuses[-4:] != [429] * 4 and len(statuses) < 2 * limit:  # until both refuse, twice each
            statuses.append(http_status(f"{gateways[len(statuses) % 2].url}/.well-known/jwks.json", timeout=5))
        assert set(statuses) == {200, 429}
        # Never more than the limit between them; once both had spent their leases, exactly the limit.
        assert statuses.count(200) == limit
        # The first refusal came at most (N - 1) x (b - 1) requests early: hits the other process
        # had reserved and not yet spent.
        assert statuses.index(429) >= limit - (len(gateways) - 1) * (lease - 1)
    finally:
        for gateway in gateways:
            gateway.stop()
