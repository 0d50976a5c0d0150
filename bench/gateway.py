"""Gateway vs nginx, proxying the same user service: an authenticated GET /api/v1/users/me.

Both proxies run as one worker in front of one user-service process; wrk drives each with
the same load. The gateway does its full job on every request (Ed25519 token verification,
a Redis rate-limit round trip, header rewriting); nginx only forwards. Prints a table and,
last, one JSON line.

    python bench/gateway.py [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.polling import eventually  # noqa: E402
from tests.helpers.processes import issuer_env  # noqa: E402

from bench.common import REDIS_URL, Services, database, ensure_debian_packages, free_port, wrk  # noqa: E402

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream users {{ server 127.0.0.1:{users_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location /api/ {{
      proxy_pass http://users/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
PASSWORD = "benchmark password 1"


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def access_token(users_url: str, database_url: str) -> str:
    email = "bench@example.com"
    post(f"{users_url}/v1/auth/register", {"email": email, "password": PASSWORD, "name": "Bench"})

    async def verification_token() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            payload = await conn.fetchval(
                "SELECT payload FROM events WHERE type = 'user.email_verification_requested'")
        finally:
            await conn.close()
        return json.loads(payload)["token"]

    post(f"{users_url}/v1/auth/verify-email", {"token": asyncio.run(verification_token()), "password": PASSWORD})
    return post(f"{users_url}/v1/auth/login", {"email": email, "password": PASSWORD})["access_token"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    ensure_debian_packages(("nginx-light", "/usr/sbin/nginx"), ("wrk", "wrk"))

    state = Path(tempfile.mkdtemp(prefix="prog-bench-gw-"))
    limits = {g: {"requests": 10**9, "window_seconds": 60} for g in ("auth", "anonymous", "default")}
    with database() as database_url:
        services = Services({
            "PROG_ENV": "development", "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
            "PROG_STATE_DIR": str(state), "GATEWAY_RATE_LIMITS": json.dumps(limits),
            "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
        })
        nginx = None
        try:
            users_port = free_port()
            users_url = services.start("user-service", users_port)
            gateway_url = services.start("api-gateway", free_port(), **issuer_env(users_url))
            nginx_port = free_port()
            (state / "nginx.conf").write_text(NGINX_CONF.format(dir=state, users_port=users_port, port=nginx_port))
            nginx = subprocess.Popen(["/usr/sbin/nginx", "-c", str(state / "nginx.conf"), "-g", "daemon off;"])
            eventually(lambda: _listening(nginx_port), what="nginx")

            headers = {"Authorization": f"Bearer {access_token(users_url, database_url)}"}
            targets = {"nginx": f"http://127.0.0.1:{nginx_port}/api/v1/users/me",
                       "gateway": f"{gateway_url}/api/v1/users/me"}
            results = {}
            for name, url in targets.items():
                wrk(url, 2, args.connections, headers)  # warm-up: pools, caches, JIT-free but still
                results[name] = wrk(url, args.seconds, args.connections, headers)
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait(10)
            services.stop()

    print(f"{'proxy':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in results.items():
        print(f"{name:<10}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}")
    ratio = results["gateway"]["rps"] / results["nginx"]["rps"]
    print(f"gateway / nginx throughput: {ratio:.2f}")
    print(json.dumps({
        "gateway_rps": round(results["gateway"]["rps"], 1), "nginx_rps": round(results["nginx"]["rps"], 1),
        "ratio": round(ratio, 3), "gateway_p99_ms": results["gateway"]["p99_ms"],
        "nginx_p99_ms": results["nginx"]["p99_ms"],
    }))


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
