"""The cost of one authenticated request in a service: GET /v1/users/me against a bare baseline.

In one run, against a throwaway database (created, migrated with the project's migrations,
dropped) and this machine's Redis (a database number of its own, flushed after):

- the user service, started as a real process exactly as `prog serve` runs it (the kit's
  server, one process, production's log level: an access line per request), answering
  GET /v1/users/me with a real access token obtained by registering, verifying and logging in;
- a baseline: a bare FastAPI app served by the same server with the same settings (the kit's
  server config and protocol, one process, the same event loop), whose one route verifies the
  same EdDSA token with PyJWT against the same public key and reads the same user row with an
  asyncpg pool, returning the same JSON. No middleware, no logging, no revocation check.

Both answer the same body (checked before measuring), so the ratio is what the service's
machinery costs: middleware, dependencies, ORM, response models, logging, metrics.

Fair on a small, shared machine, as bench/gateway.py: the two servers run on one half of the
CPUs and wrk on the other (`--no-pin` lets the scheduler place them; PostgreSQL and Redis run
wherever the system put them, for both alike), and the setups are measured in interleaved
rounds, each figure the median of its rounds.

    python bench/users.py [--seconds 5] [--rounds 4] [--connections 32] [--no-pin]

The last line printed is one JSON object: me_rps, baseline_rps, ratio (me ÷ baseline),
me_p99_ms, baseline_p99_ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import redis
from fastapi import FastAPI, HTTPException, Request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.polling import eventually  # noqa: E402
from tests.helpers.tokens import bearer  # noqa: E402

from bench.common import (  # noqa: E402
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

# A database number of its own: the other benchmarks use BENCH_REDIS_URL's (13).
REDIS_URL = os.environ.get("BENCH_USERS_REDIS_URL", "redis://127.0.0.1:6379/12")
PATH = "/v1/users/me"
# The row UserOut renders (users/api.py), read as the service reads it: by primary key.
USER_ROW = "SELECT id, email, name, role, email_verified_at, created_at FROM users WHERE id = $1"


# --- the baseline: what one authenticated read costs with nothing but the libraries -------------


def baseline_app(database_url: str, jwks_url: str, issuer: str, audience: str, pool_size: int) -> Any:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with urllib.request.urlopen(jwks_url, timeout=10) as response:  # noqa: S310 - our own http:// URL
            jwk = json.loads(response.read())["keys"][0]
        state["key"] = jwt.PyJWK(jwk, algorithm="EdDSA").key
        # The service's pool: DB_POOL_SIZE connections (kit/db.py; it may grow to twice that).
        async with asyncpg.create_pool(database_url, min_size=pool_size, max_size=pool_size) as pool:
            state["pool"] = pool
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get(PATH)
    async def me(request: Request) -> dict[str, Any]:
        _, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            claims = jwt.decode(token, state["key"], algorithms=["EdDSA"], audience=audience, issuer=issuer)
        except jwt.PyJWTError:
            raise HTTPException(401) from None
        row = await state["pool"].fetchrow(USER_ROW, uuid.UUID(claims["sub"]))
        if row is None:
            raise HTTPException(404)
        return {
            "id": str(row["id"]),
            "email": row["email"],
            "name": row["name"],
            "role": row["role"],
            "email_verified": row["email_verified_at"] is not None,
            # As pydantic renders an aware UTC datetime (the service's UserOut).
            "created_at": row["created_at"].isoformat().replace("+00:00", "Z"),
        }

    return app


def serve_baseline(port: int, ops_port: int, database_url: str, jwks_url: str) -> None:
    """Serve the baseline on the kit's server, configured exactly as `prog serve` configures it."""
    from prognetwork.kit import server
    from prognetwork.kit.app import Lifecycle
    from prognetwork.kit.settings import Settings

    settings = Settings()
    app = baseline_app(database_url, jwks_url, settings.jwt_issuer, settings.jwt_audience, settings.db_pool_size)
    app.state.lifecycle = Lifecycle()
    sockets = [server.listen("127.0.0.1", port), server.listen("127.0.0.1", ops_port)]
    config = server.server_config(app, settings, host="127.0.0.1", port=port)
    server.DrainingServer(config, app, settings.drain_seconds).run(sockets=sockets)


# --- the run ------------------------------------------------------------------------------------


def get(url: str, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=bearer(token))
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own http:// URL
        return response.status, json.loads(response.read())


def run(load: Load, state: Path) -> dict[str, dict]:
    with database() as database_url:
        services = Services({
            "PROG_ENV": "development", "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
            "PROG_STATE_DIR": str(state),
        })
        baseline: subprocess.Popen | None = None
        try:
            with pinned(load.server_cpus):
                # Production's log level (deploy/k8s: LOG_LEVEL=INFO): an access line per request.
                users_url = services.start("user-service", free_port(), LOG_LEVEL="INFO")
            token = access_token(users_url, database_url)
            port, ops_port = free_port(), free_port()
            command = [sys.executable, __file__, "--serve-baseline", str(port), str(ops_port), database_url,
                       f"{users_url}/.well-known/jwks.json"]
            with pinned(load.server_cpus):
                baseline = subprocess.Popen(  # noqa: S603 - this interpreter and this file
                    command, cwd=ROOT, env={**services.env, "LOG_LEVEL": "WARNING"},
                    stdout=open(services.logs / "baseline.log", "wb"), stderr=subprocess.STDOUT)
            baseline_url = f"http://127.0.0.1:{port}"
            eventually(lambda: get(baseline_url + PATH, token)[0] == 200, timeout=30, what="the baseline")
            me, bare = get(users_url + PATH, token)[1], get(baseline_url + PATH, token)[1]
            if me != bare:
                raise SystemExit(f"the baseline answers {bare}, the service {me}: not the same work")
            return measure({"me": users_url + PATH, "baseline": baseline_url + PATH}, load, bearer(token))
        finally:
            if baseline is not None:
                baseline.terminate()
                baseline.wait(15)
            services.stop()
            redis.Redis.from_url(REDIS_URL).flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per round and setup")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place servers and wrk")
    parser.add_argument("--serve-baseline", nargs=4, metavar=("PORT", "OPS_PORT", "DATABASE_URL", "JWKS_URL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        port, ops_port, database_url, jwks_url = args.serve_baseline
        serve_baseline(int(port), int(ops_port), database_url, jwks_url)
        return
    ensure_debian_packages(("wrk", "wrk"))
    started = time.monotonic()
    split = None if args.no_pin else split_cpus()
    load = Load(args.seconds, args.rounds, args.connections, split[1] if split else None, split[0] if split else None)
    print(f"wrk -t1 -c{args.connections}, {args.rounds} interleaved rounds of {args.seconds} s per setup (after a "
          "2 s warm-up), medians; each server ONE process on the kit's server (prog serve's settings).")
    print(f"servers on CPUs {sorted(split[0])}, wrk on CPUs {sorted(split[1])}" if split
          else "servers and wrk placed by the scheduler")
    results = run(load, Path(tempfile.mkdtemp(prefix="prog-bench-users-")))
    table(f"GET {PATH}: the user service (LOG_LEVEL=INFO) and a bare FastAPI + PyJWT + asyncpg baseline", results)
    ratio = results["me"]["rps"] / results["baseline"]["rps"]
    print(f"  user service / baseline throughput: {ratio:.3f}")
    print(f"({time.monotonic() - started:.0f} s)")
    print(json.dumps({
        "me_rps": round(results["me"]["rps"], 1), "baseline_rps": round(results["baseline"]["rps"], 1),
        "ratio": round(ratio, 3), "me_p99_ms": results["me"]["p99_ms"],
        "baseline_p99_ms": results["baseline"]["p99_ms"],
    }))


if __name__ == "__main__":
    main()
