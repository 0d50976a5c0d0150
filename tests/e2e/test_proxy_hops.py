"""Client addresses through two proxy hops, as deployed: nginx (the edge, as ingress-nginx) in front
of the gateway, in front of the user service. Each process believes X-Forwarded-For only from the
hop before it (FORWARDED_ALLOW_IPS); the gateway passes on the address it determined, never the
chain a client wrote. So the user service's sign-in throttle (per client address) counts each
client apart, and no client escapes its count, or spends another's, by writing the header itself.

The clients are told apart by their source address on the loopback network (127.0.0.2, 127.0.0.3);
nginx and every service listen on 127.0.0.1."""

from __future__ import annotations

import json
import uuid
from contextlib import ExitStack

import pytest

from tests.helpers.accounts import unique_email
from tests.helpers.events import append_events
from tests.helpers.nginx import nginx, request_from
from tests.helpers.processes import issuer_env, start_service
from tests.helpers.sse import open_stream
from tests.helpers.tokens import mint

pytestmark = pytest.mark.e2e

CLIENT_A, CLIENT_B = "127.0.0.2", "127.0.0.3"
ATTEMPTS_PER_ADDRESS = 3
# The edge as ingress-nginx configures it by default: the client's address appended to whatever
# X-Forwarded-For the client sent (the worst case: a spoofed chain reaches the gateway).
EDGE = """
    location / {{
      proxy_pass http://127.0.0.1:{port};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
"""
GENEROUS = {group: {"requests": 1000, "window_seconds": 60} for group in ("auth", "anonymous", "default")}


def failed_logins(login_url: str, client: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    """The statuses of `count` sign-ins with a wrong password, each for another address."""
    return [request_from(client, "POST", login_url,
                         {"email": unique_email("hops"), "password": "not the password"}, headers)[0]
            for _ in range(count)]


@pytest.fixture
def stack(service_env, tmp_path):
    """nginx → api-gateway → user-service, each believing the hop before it (all on 127.0.0.1):
    the sign-in URL at the edge, and the user service's own."""
    users = start_service("user-service", {**service_env, "LOGIN_ATTEMPTS_PER_ADDRESS": str(ATTEMPTS_PER_ADDRESS),
                                           "FORWARDED_ALLOW_IPS": "127.0.0.1"}, tmp_path)
    gateway = start_service("api-gateway", {**service_env, **issuer_env(users.url), "FORWARDED_ALLOW_IPS": "127.0.0.1",
                                            "GATEWAY_RATE_LIMITS": json.dumps(GENEROUS)}, tmp_path)
    try:
        with nginx(tmp_path / "nginx", EDGE.format(port=gateway.port)) as edge:
            yield f"{edge}/api/v1/auth/login", f"{users.url}/v1/auth/login"
    finally:
        gateway.stop()
        users.stop()


def test_two_clients_are_throttled_apart_and_none_can_pick_its_address(stack):
    edge, users = stack
    refused = ATTEMPTS_PER_ADDRESS * [401] + [429]
    assert failed_logins(edge, CLIENT_A, ATTEMPTS_PER_ADDRESS + 1) == refused
    # A's count is A's alone.
    assert failed_logins(edge, CLIENT_B, 1) == [401]
    # A cannot start afresh under a made-up address, nor under B's: its own address is the last hop
    # nginx appended, and that is what the gateway passes on.
    assert failed_logins(edge, CLIENT_A, 1, {"X-Forwarded-For": "198.51.100.7"}) == [429]
    assert failed_logins(edge, CLIENT_A, 1, {"X-Forwarded-For": CLIENT_B}) == [429]
    # Nor by going round the gateway: the user service believes the gateway's address alone.
    assert failed_logins(users, CLIENT_A, 1, {"X-Forwarded-For": "198.51.100.8"}) == [429]
    # …and spent none of B's attempts doing so.
    assert failed_logins(edge, CLIENT_B, ATTEMPTS_PER_ADDRESS) == (ATTEMPTS_PER_ADDRESS - 1) * [401] + [429]


# ---- event streams through the edge ------------------------------------------------------------

# The stream's location as the ingress-nginx component configures it (proxy-buffering off, read and
# send timeouts), with timeouts of seconds instead of an hour, so that outliving one is quick.
STREAM_EDGE = """
    location /v1/events/stream {{
      proxy_pass http://127.0.0.1:{port};
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_read_timeout {timeout};
      proxy_send_timeout {timeout};
    }}
"""
HEARTBEAT_SECONDS = 0.25
LONG_TIMEOUT_SECONDS = 2  # eight keep-alive intervals
SHORT_TIMEOUT = "100ms"  # shorter than one


async def test_keep_alives_hold_a_stream_open_through_an_edge_whose_read_timeout_is_longer(
        service_env, jwks_server, tmp_path, http, sessions, signing_key):
    """The keep-alive comment (STREAM_HEARTBEAT_SECONDS) is what keeps a quiet stream open through
    a proxy's read timeout, so every hop's must be well above it (deploy/k8s/README.md): through
    an edge whose timeout is longer the stream outlives that timeout several times over and still
    delivers; through one whose timeout is shorter (as Envoy's 15 s route timeout or nginx's 60 s
    default would be against a 15 s keep-alive's worst case) the same stream is cut."""
    streaming = start_service("event-streaming", {
        **service_env, "JWKS_URL": f"{jwks_server.url}/.well-known/jwks.json",
        "STREAM_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS), "SHUTDOWN_DRAIN_SECONDS": "0"}, tmp_path)
    user = uuid.uuid4()
    token = mint(signing_key, user)
    try:
        with ExitStack() as edges:
            long_edge, short_edge = (edges.enter_context(nginx(tmp_path / name, STREAM_EDGE.format(
                port=streaming.port, timeout=timeout))) for name, timeout in (
                    ("long", f"{LONG_TIMEOUT_SECONDS}s"), ("short", SHORT_TIMEOUT)))
            held = await open_stream(http, long_edge, token)
            cut = await open_stream(http, short_edge, token)
            try:
                await cut.wait_for(lambda s: s.ended, timeout=30, what="the short-timeout edge to end the stream")
                # Quiet for three of the long timeouts, and still open…
                quiet = int(3 * LONG_TIMEOUT_SECONDS / HEARTBEAT_SECONDS)
                await held.wait_for(lambda s: s.comments.count("keep-alive") >= quiet, timeout=30,
                                    what=f"{quiet} keep-alives through nginx")
                assert not held.ended
                # …and an event published now still arrives on it.
                (seq,) = await append_events(sessions, 1, user_id=user)
                await held.wait_for_seq(seq)
            finally:
                await held.close()
                await cut.close()
    finally:
        streaming.stop()
