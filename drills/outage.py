"""drill-outage: PostgreSQL stopped, then Redis stopped, then Redis hung, under light load.

Starts its own platform (user service, notification service, gateway) on its own PostgreSQL and
Redis, and keeps a light load running through the gateway the whole time: registrations (each
owes exactly one verification email), refresh chains (each a signed-in client refreshing its
session, as an app does) and authenticated reads. Then, one after the other:

    postgres     PostgreSQL stopped for --outage seconds, then started again
    redis        Redis stopped (connections refused) for --outage seconds, then started again
    redis_hung   Redis stopped with SIGSTOP (connections open, nothing answers), then resumed

Prints a timeline as it goes and, last, one JSON line: for each phase
    unready_after_s      outage start → the user service's readiness first says 503 (null: never)
    recovered_after_s    dependency back → readiness 200 and both a registration and a refresh
                         sent after that point succeeded
    sessions_lost        refresh chains that got 401 (the client would have to sign in again)
    emails_expected      registrations accepted (202) during the phase
    emails_delivered     of those, verification emails delivered; emails_duplicated: more than once
    first_email_after_s  dependency back → the first email delivered after that
    max_request_latency_ms  the slowest request sent while the dependency was out

    python drills/outage.py [--outage 30] [--settle 5] [--chains 4] [--keep]

Goals: sessions_lost 0; every email exactly once; recovery ≤ 5 s; during the hung Redis, no
request slower than 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from drills.stack import (  # noqa: E402
    PASSWORD,
    Load,
    OwnPostgres,
    OwnRedis,
    Processes,
    Timeline,
    unique_email,
    verified_session,
    workdir,
)

RECOVERY_DEADLINE = 90.0


class Drill:
    def __init__(self, args: argparse.Namespace, gateway: str, notifications: str, users_ops: str,
                 database_url: str) -> None:
        self.args = args
        self.gateway = gateway
        self.notifications = notifications
        self.users_ops = users_ops
        self.database_url = database_url
        self.timeline = Timeline()
        self.wall_started = time.time()
        self.load = Load(self.timeline)
        self.registered: list[tuple[float, str]] = []  # (drill seconds, address) of each 202
        self.lost: list[float] = []  # when a refresh chain got 401
        self.readiness: list[tuple[float, int]] = []
        self.stop = asyncio.Event()

    async def register_forever(self, http: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            email = unique_email("outage")
            at = self.timeline.now()
            status, _ = await self.load.send(http, "register", "POST", f"{self.gateway}/api/v1/auth/register",
                                             {"email": email, "password": PASSWORD, "name": "Drill"})
            if status == 202:
                self.registered.append((at, email))
            await _pause(self.stop, 0.25)

    async def refresh_chain(self, http: aiohttp.ClientSession, tokens: dict) -> None:
        """A signed-in client: reads every 0.5 s, refreshes every 2 s; a refresh that failed is
        retried the next round (Retry-After says 1 s) with the same token."""
        rounds = 0
        pending = False
        while not self.stop.is_set():
            await self.load.send(http, "me", "GET", f"{self.gateway}/api/v1/users/me",
                                 headers={"Authorization": f"Bearer {tokens['access_token']}"})
            rounds += 1
            if pending or rounds % 4 == 0:
                status, body = await self.load.send(http, "refresh", "POST", f"{self.gateway}/api/v1/auth/refresh",
                                                    {"refresh_token": tokens["refresh_token"]})
                pending = status != 200
                if status == 200 and isinstance(body, dict):
                    tokens.update(body)
                elif status == 401:
                    pending = False
                    self.lost.append(self.timeline.now())
                    self.timeline.mark(f"a session was lost: {body}")
                    tokens.update(await self.relogin(http, tokens))
            await _pause(self.stop, 0.5)

    async def relogin(self, http: aiohttp.ClientSession, tokens: dict) -> dict:
        while not self.stop.is_set():
            status, body = await self.load.send(http, "login", "POST", f"{self.gateway}/api/v1/auth/login",
                                                {"email": tokens["email"], "password": PASSWORD})
            if status == 200 and isinstance(body, dict):
                return body
            await _pause(self.stop, 1.0)
        return {}

    async def watch_readiness(self, http: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            try:
                async with http.get(f"{self.users_ops}/readiness", timeout=aiohttp.ClientTimeout(total=3)) as r:
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.readiness.append((self.timeline.now(), status))
            await _pause(self.stop, 0.1)

    def recovered(self, since: float) -> bool:
        ready = any(at >= since and status == 200 for at, status in self.readiness[-5:])
        registered = any(o.at >= since and o.kind == "register" and o.status == 202 for o in self.load.outcomes)
        refreshed = any(o.at >= since and o.kind == "refresh" and o.status == 200 for o in self.load.outcomes)
        return ready and registered and refreshed

    async def phase(self, name: str, brk: Callable[[], None], fix: Callable[[], None]) -> dict:
        begun = self.timeline.now()
        await _pause(self.stop, self.args.settle)
        broken = self.timeline.mark(f"{name}: break")
        await asyncio.to_thread(brk)
        await _pause(self.stop, self.args.outage)
        fixed = self.timeline.mark(f"{name}: restore")
        await asyncio.to_thread(fix)
        deadline = time.monotonic() + RECOVERY_DEADLINE
        while not self.recovered(fixed) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        recovered = self.timeline.mark(f"{name}: recovered") if self.recovered(fixed) else None
        await _pause(self.stop, self.args.settle)
        ended = self.timeline.now()
        unready = next((at for at, status in self.readiness if broken <= at and status != 200), None)
        during = self.load.between(broken, fixed)
        return {
            "begun": begun, "broken": broken, "fixed": fixed, "ended": ended,
            "unready_after_s": None if unready is None or unready > (recovered or ended) else round(unready - broken, 2),
            "recovered_after_s": None if recovered is None else round(recovered - fixed, 2),
            "sessions_lost": sum(1 for at in self.lost if begun <= at < ended),
            "max_request_latency_ms": round(max((o.seconds for o in during), default=0.0) * 1000, 1),
            "requests": len(during),
            "by_status": self.load.by_status(broken, fixed),
        }

    async def emails(self, phases: dict[str, dict]) -> None:
        """Wait for every accepted registration's email (bounded), then count them per phase."""
        expected = {email for _, email in self.registered}
        conn = await asyncpg.connect(self.database_url)
        try:
            deadline = time.monotonic() + 60
            while True:
                rows = await conn.fetch(
                    "SELECT recipient, count(*) AS n, min(sent_at) AS first FROM dev_outbox "
                    "WHERE recipient = ANY($1::text[]) GROUP BY recipient", list(expected))
                if len(rows) >= len(expected) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            sent = await conn.fetch("SELECT sent_at FROM dev_outbox ORDER BY sent_at")
        finally:
            await conn.close()
        delivered = {row["recipient"]: row["n"] for row in rows}
        sent_at = [row["sent_at"].timestamp() - self.wall_started for row in sent]
        for phase in phases.values():
            mine = [email for at, email in self.registered if phase["begun"] <= at < phase["ended"]]
            phase["emails_expected"] = len(mine)
            phase["emails_delivered"] = sum(1 for email in mine if email in delivered)
            phase["emails_duplicated"] = sum(1 for email in mine if delivered.get(email, 0) > 1)
            first = next((at for at in sent_at if at >= phase["fixed"]), None)
            phase["first_email_after_s"] = None if first is None else round(first - phase["fixed"], 2)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def run(args: argparse.Namespace, postgres: OwnPostgres, redis: OwnRedis, processes: Processes) -> dict:
    users = processes.start("user-service")
    notifications = processes.start("notification-service", USER_SERVICE_URL=users.url)
    gateway = processes.start("api-gateway", USER_SERVICE_URL=users.url, NOTIFICATION_SERVICE_URL=notifications.url,
                              JWKS_URL=f"{users.url}/.well-known/jwks.json")
    drill = Drill(args, gateway.url, notifications.url, users.ops_url, postgres.url)
    drill.timeline.mark("platform ready: user-service, notification-service, api-gateway")
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        sessions = []
        for _ in range(args.chains):
            tokens = await verified_session(http, gateway.url, notifications.url)
            sessions.append(tokens)
        emails = [await _email_of(http, gateway.url, t) for t in sessions]
        for tokens, email in zip(sessions, emails, strict=True):
            tokens["email"] = email
        drill.timeline.mark(f"{args.chains} signed-in clients; load starts")
        tasks = [asyncio.create_task(drill.register_forever(http)), asyncio.create_task(drill.watch_readiness(http))]
        tasks += [asyncio.create_task(drill.refresh_chain(http, tokens)) for tokens in sessions]
        phases = {
            "postgres": await drill.phase("postgres", postgres.stop, postgres.start),
            "redis": await drill.phase("redis", redis.stop, redis.start),
            "redis_hung": await drill.phase("redis_hung", redis.hang, redis.resume),
        }
        drill.stop.set()
        await asyncio.gather(*tasks)
    drill.timeline.mark("load stopped; counting emails")
    await drill.emails(phases)
    for phase in phases.values():
        for key in ("begun", "broken", "fixed", "ended"):
            del phase[key]
    return phases


async def _email_of(http: aiohttp.ClientSession, gateway: str, tokens: dict) -> str:
    async with http.get(f"{gateway}/api/v1/users/me",
                        headers={"Authorization": f"Bearer {tokens['access_token']}"}) as response:
        return (await response.json())["email"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=30.0, help="seconds each dependency stays out")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of steady load before and after")
    parser.add_argument("--chains", type=int, default=4, help="signed-in clients refreshing their sessions")
    parser.add_argument("--keep", action="store_true", help="keep the drill's directory (logs, data)")
    args = parser.parse_args()
    with workdir(args.keep) as directory:
        postgres = OwnPostgres(directory / "postgres")
        redis = OwnRedis(directory)
        processes = Processes(directory, {"DATABASE_URL": postgres.url, "REDIS_URL": redis.url})
        try:
            phases = asyncio.run(run(args, postgres, redis, processes))
        finally:
            processes.stop()
            redis.stop()
            postgres.close()
    print(json.dumps(phases))


if __name__ == "__main__":
    main()
