"""The gateway's own overhead, against nginx, in front of an upstream that is never the bottleneck.

Section 1 (what the JSON line reports): a trivial fast upstream — nginx serving a small static
JSON body (and the token issuer's key set) over keep-alive — measured three ways with the same
wrk load: direct, through nginx (proxy_pass, pooled keep-alive) and through the gateway, which
does its full work on every request: Ed25519 token verification (or its verified-token cache),
the rate-limit decision against Redis, revocation, header rewriting, request id and metrics.
Neither writes an access log (nginx `access_log off`, the gateway LOG_LEVEL=WARNING). Every
server is ONE process (nginx `worker_processes 1`, the gateway one worker).

Fair on a small, shared machine: the servers under test (upstream and proxy) run on one half
of the CPUs and wrk on the other (`--no-pin` lets the scheduler place them), so the load
generator never takes CPU from the proxy it measures and each setup gets the same cores; and
the setups are measured in interleaved rounds (direct, nginx, gateway, direct, ...), each
figure the median of its rounds, so a burst of someone else's load lands on every setup alike.

A fourth row, "bare proxy" (bench/bare_proxy.py), is uvicorn with the gateway's upstream client
and none of its work: it splits the gateway's cost into the Python server and client (bare ÷
nginx) and the gateway's own work (gateway ÷ bare).

Section 2 (`--end-to-end`, off by default): the old comparison, both proxies in front of a real
user service answering GET /api/v1/users/me; that service saturates first, so its ratio says
little about either proxy.

    python bench/gateway.py [--seconds 3] [--rounds 5] [--connections 32] [--no-pin] [--end-to-end]

The last line printed is one JSON object: gateway_rps, nginx_rps, direct_rps, ratio
(gateway ÷ nginx), gateway_p99_ms, nginx_p99_ms — all from section 1.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.polling import eventually  # noqa: E402
from tests.helpers.processes import issuer_env  # noqa: E402
from tests.helpers.tokens import bearer, mint  # noqa: E402

from bench.common import (  # noqa: E402
    REDIS_URL,
    ROOT,
    Load,
    Services,
    access_token,
    database,
    ensure_debian_packages,
    free_port,
    measure,
    pinned,
    split_cpus,
    table,
)
from prognetwork.users.keys import generate_pem, load_key  # noqa: E402

NGINX = "/usr/sbin/nginx"
# Keep-alive connections are never recycled during a run (nginx closes one after 1000 requests
# by default), so every setup measures requests, not reconnections.
NGINX_HEAD = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
"""
# The upstream: any path answers the same small JSON body, and the key set its own (inline: the
# workers run as an unprivileged user that cannot read the run's private folder).
UPSTREAM_CONF = NGINX_HEAD + """
  server {{
    listen 127.0.0.1:{port};
    location = /.well-known/jwks.json {{ default_type application/json; return 200 '{jwks}'; }}
    location / {{ default_type application/json; return 200 '{body}'; }}
  }}
}}
"""
PROXY_CONF = NGINX_HEAD + """
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    location /api/ {{
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
BODY = '{"id":"00000000-0000-4000-8000-000000000000","email":"bench@example.com","name":"Bench"}'
PATH = "/api/v1/users/me"  # an authenticated route of the default table (group "default")
UNLIMITED = {g: {"requests": 10**9, "window_seconds": 60} for g in ("auth", "anonymous", "webhooks", "default")}


@contextmanager
def nginx(directory: Path, conf: str, cpus: set[int] | None = None) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "nginx.conf").write_text(conf)
    with pinned(cpus):
        process = subprocess.Popen([NGINX, "-c", str(directory / "nginx.conf"), "-g", "daemon off;"])  # noqa: S603
    try:
        yield
    finally:
        process.terminate()
        process.wait(10)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def fast_upstream(state: Path, load: Load) -> dict[str, dict]:
    pem = generate_pem()
    jwks = json.dumps({"keys": [load_key(pem).jwk]})
    upstream_port, proxy_port = free_port(), free_port()
    upstream_dir, proxy_dir = state / "upstream", state / "proxy"
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    services = Services({"PROG_ENV": "development", "REDIS_URL": REDIS_URL, "PROG_STATE_DIR": str(state),
                         "GATEWAY_RATE_LIMITS": json.dumps(UNLIMITED)})
    upstream_conf = UPSTREAM_CONF.format(dir=upstream_dir, port=upstream_port, body=BODY, jwks=jwks)
    with nginx(upstream_dir, upstream_conf, load.server_cpus):
        eventually(lambda: listening(upstream_port), what="the upstream nginx")
        proxy_conf = PROXY_CONF.format(dir=proxy_dir, port=proxy_port, upstream_port=upstream_port)
        with nginx(proxy_dir, proxy_conf, load.server_cpus):
            eventually(lambda: listening(proxy_port), what="the proxying nginx")
            try:
                with pinned(load.server_cpus):
                    gateway_url = services.start("api-gateway", free_port(), **issuer_env(upstream_url))
                    bare_port = free_port()
                    bare = subprocess.Popen(  # noqa: S603 - our own module
                        [sys.executable, "-m", "bench.bare_proxy", str(bare_port), str(upstream_port)], cwd=ROOT)
                    services.processes.append(bare)
                eventually(lambda: listening(bare_port), what="the bare proxy")
                # Valid for the whole run; its session is never signed out.
                token = mint(pem, uuid.uuid4(), lifetime=3600, sid=uuid.uuid4().hex)
                check(f"{gateway_url}{PATH}", token)
                targets = {"direct": f"{upstream_url}{PATH.removeprefix('/api')}",
                           "nginx": f"http://127.0.0.1:{proxy_port}{PATH}",
                           "bare proxy": f"http://127.0.0.1:{bare_port}{PATH}",
                           "gateway": f"{gateway_url}{PATH}"}
                return measure(targets, load, bearer(token))
            finally:
                services.stop()


def check(url: str, token: str) -> None:
    """The gateway really proxies this request (200, the upstream's body), so wrk measures that."""
    request = urllib.request.Request(url, headers=bearer(token))
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own http:// URL
        assert response.status == 200 and json.loads(response.read())["email"] == "bench@example.com"


def end_to_end(state: Path, load: Load) -> dict[str, dict]:
    with database() as database_url:
        services = Services({
            "PROG_ENV": "development", "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
            "PROG_STATE_DIR": str(state), "GATEWAY_RATE_LIMITS": json.dumps(UNLIMITED),
            "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
        })
        try:
            users_port = free_port()
            with pinned(load.server_cpus):
                users_url = services.start("user-service", users_port)
                gateway_url = services.start("api-gateway", free_port(), **issuer_env(users_url))
            proxy_port = free_port()
            proxy_dir = state / "proxy"
            proxy_conf = PROXY_CONF.format(dir=proxy_dir, port=proxy_port, upstream_port=users_port)
            with nginx(proxy_dir, proxy_conf, load.server_cpus):
                eventually(lambda: listening(proxy_port), what="nginx")
                headers = bearer(access_token(users_url, database_url))
                targets = {"nginx": f"http://127.0.0.1:{proxy_port}{PATH}", "gateway": f"{gateway_url}{PATH}"}
                return measure(targets, load, headers)
        finally:
            services.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="per round and setup")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place servers and wrk")
    parser.add_argument("--end-to-end", action="store_true", help="also compare both in front of the user service")
    args = parser.parse_args()
    ensure_debian_packages(("nginx-light", NGINX), ("wrk", "wrk"))
    started = time.monotonic()
    split = None if args.no_pin else split_cpus()
    load = Load(args.seconds, args.rounds, args.connections, split[1] if split else None, split[0] if split else None)

    print(f"wrk -t1 -c{args.connections}, {args.rounds} interleaved rounds of {args.seconds} s per setup (after a "
          "2 s warm-up), medians; nginx runs worker_processes 1 and the gateway ONE process (one worker), "
          "neither writing an access log.")
    print(f"servers on CPUs {sorted(split[0])}, wrk on CPUs {sorted(split[1])}" if split
          else "servers and wrk placed by the scheduler")
    fast = fast_upstream(Path(tempfile.mkdtemp(prefix="prog-bench-gw-")), load)
    table(f"1. fast upstream (nginx, static JSON) — GET {PATH}, the gateway doing its full work per request", fast)
    ratio = fast["gateway"]["rps"] / fast["nginx"]["rps"]
    print(f"  gateway / nginx throughput: {ratio:.3f}; nginx / direct: {fast['nginx']['rps'] / fast['direct']['rps']:.3f}")
    print(f"  bare proxy / nginx: {fast['bare proxy']['rps'] / fast['nginx']['rps']:.3f} (the server and client alone); "
          f"gateway / bare proxy: {fast['gateway']['rps'] / fast['bare proxy']['rps']:.3f} (what the gateway's work leaves)")
    if args.end_to_end:
        slow = end_to_end(Path(tempfile.mkdtemp(prefix="prog-bench-gw-e2e-")), load)
        table(f"2. end to end — GET {PATH} answered by one user-service process (the bottleneck)", slow)
        print(f"  gateway / nginx throughput: {slow['gateway']['rps'] / slow['nginx']['rps']:.3f}")
    print(f"({time.monotonic() - started:.0f} s)")
    print(json.dumps({
        "gateway_rps": round(fast["gateway"]["rps"], 1), "nginx_rps": round(fast["nginx"]["rps"], 1),
        "direct_rps": round(fast["direct"]["rps"], 1), "ratio": round(ratio, 3),
        "gateway_p99_ms": fast["gateway"]["p99_ms"], "nginx_p99_ms": fast["nginx"]["p99_ms"],
    }))


if __name__ == "__main__":
    main()
