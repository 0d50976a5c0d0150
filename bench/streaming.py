"""Event streaming fan-out: N SSE subscribers while events are appended at a steady rate.

One streaming-service process serves N subscribers (aiohttp, one connection each, admin
tokens so each sees every event) while a separate process appends events to the log at
`--rate` per second, each payload carrying its append wall time. Every subscriber checks
it got every event once, in order; latency is receive time minus append time. The
baseline, in the same run: the same events published through Redis pub/sub to N raw
asyncio subscribers (redis.asyncio). Prints a table and, last, one JSON line.

    python bench/streaming.py [--subscribers 1000] [--rate 60] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import resource
import sys
import tempfile
import threading
import time
import uuid
from array import array
from pathlib import Path

import aiohttp
import jwt
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.processes import issuer_env  # noqa: E402

from bench.common import REDIS_URL, Services, database, free_port  # noqa: E402

CHANNEL = "bench:stream"
SENT_AT = re.compile(rb'"t": ([0-9.]+)')
DRAIN_SECONDS = 15.0  # after the last append, how long subscribers may take to catch up


class Tally:
    """What one subscriber saw."""

    __slots__ = ("count", "last", "duplicated", "latencies", "last_at")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0
        self.duplicated = 0
        self.latencies = array("d")
        self.last_at = 0.0

    def seen(self, seq: int, sent_at: float, now: float) -> None:
        if seq <= self.last:
            self.duplicated += 1
            return
        self.last = seq
        self.count += 1
        self.latencies.append(now - sent_at)
        self.last_at = now


# -- the producer (its own process, so its pace does not depend on the subscribers' loop) ---

def produce(mode: str, target: str, rate: float, seconds: float, results) -> None:
    asyncio.run(_produce(mode, target, rate, seconds, results))


async def _produce(mode: str, target: str, rate: float, seconds: float, results) -> None:
    total = int(rate * seconds)
    seqs: list[int] = []
    started = time.time()
    if mode == "postgres":
        from prognetwork.kit import db, events

        engine = db.create_engine(target, pool_size=2)
        sessions = db.sessionmaker(engine)

        async def emit(n: int) -> None:
            async with sessions() as session, session.begin():
                event = await events.append(session, "bench.tick", {"n": n, "t": time.time()})
            seqs.append(event.seq)
    else:
        from redis.asyncio import Redis

        redis = Redis.from_url(target)

        async def emit(n: int) -> None:
            body = {"id": str(uuid.uuid4()), "seq": n + 1, "type": "bench.tick", "payload": {"n": n, "t": time.time()}}
            await redis.publish(CHANNEL, b"id: %d\ndata: %s\n\n" % (n + 1, json.dumps(body).encode()))
            seqs.append(n + 1)

    for n in range(total):
        delay = started + n / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing a steady rate
        await emit(n)
    results.put({"seqs": seqs, "started": started, "finished": time.time()})
    if mode == "postgres":
        await engine.dispose()
    else:
        await redis.aclose()


# -- subscribers -----------------------------------------------------------------------------

async def sse_subscriber(session: aiohttp.ClientSession, url: str, token: str, tally: Tally,
                         connected: asyncio.Event | None) -> None:
    async with session.get(url, headers={"Authorization": f"Bearer {token}"},
                           timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
        assert response.status == 200, response.status
        if connected is not None:
            connected.set()
        buffer = b""
        async for chunk in response.content.iter_any():
            now = time.time()
            *messages, buffer = (buffer + chunk).split(b"\n\n")
            for message in messages:
                if message.startswith(b"id: "):
                    seq = int(message[4:message.index(b"\n")])
                    tally.seen(seq, float(SENT_AT.search(message).group(1)), now)


async def redis_subscriber(redis, tally: Tally, connected: asyncio.Event) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    connected.set()
    try:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            data: bytes = message["data"]
            tally.seen(int(data[4:data.index(b"\n")]), float(SENT_AT.search(data).group(1)), time.time())
    finally:
        await pubsub.aclose()


async def run_phase(mode: str, subscribers: int, connect, target: str, rate: float, seconds: float) -> dict:
    tallies = [Tally() for _ in range(subscribers)]
    connected = [asyncio.Event() for _ in range(subscribers)]
    tasks = []
    for tally, flag in zip(tallies, connected, strict=True):
        tasks.append(asyncio.create_task(connect(tally, flag)))
        if len(tasks) % 100 == 0:
            await asyncio.sleep(0)  # let connections open in waves rather than all at once
    await asyncio.wait_for(asyncio.gather(*(c.wait() for c in connected)), 120)

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    producer = context.Process(target=produce, args=(mode, target, rate, seconds, results))
    producer.start()
    outcome = await asyncio.to_thread(results.get, True, seconds * 3 + 60)
    producer.join(10)
    expected = len(outcome["seqs"])
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and any(t.count < expected for t in tallies):
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    delivered = sum(t.count for t in tallies)
    last_delivery = max((t.last_at for t in tallies), default=outcome["finished"])
    latencies = sorted(x for t in tallies for x in t.latencies)

    def percentile(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000, 2) if latencies else 0.0

    return {
        "events": expected,
        "delivered": delivered,
        "deliveries_per_s": round(delivered / max(1e-9, last_delivery - outcome["started"]), 1),
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "lost": expected * subscribers - delivered,
        "duplicated": sum(t.duplicated for t in tallies),
    }


def watch_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    process = psutil.Process(pid)
    while not stop.wait(0.2):
        try:
            peak[0] = max(peak[0], process.memory_info().rss)
        except psutil.Error:
            return


def admin_token(signing_pem: str) -> str:
    from prognetwork.users.keys import load_key

    key = load_key(signing_pem)
    now = int(time.time())
    claims = {"iss": "http://localhost:8000", "aud": "prognetwork", "sub": str(uuid.uuid4()), "iat": now,
              "nbf": now, "exp": now + 3600, "jti": uuid.uuid4().hex, "role": "admin", "sid": "bench"}
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})


async def measure(args: argparse.Namespace, stream_url: str, token: str, database_url: str) -> dict:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"{stream_url}/v1/events/stream"
        streaming = await run_phase(
            "postgres", args.subscribers, lambda tally, flag: sse_subscriber(session, url, token, tally, flag),
            database_url, args.rate, args.seconds,
        )
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL, max_connections=args.subscribers + 10)
    try:
        baseline = await run_phase(
            "redis", args.subscribers, lambda tally, flag: redis_subscriber(redis, tally, flag),
            REDIS_URL, args.rate, args.seconds,
        )
    finally:
        await redis.aclose()
    return {"streaming": streaming, "baseline": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=60.0, help="events appended per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    # Two sockets per subscriber on this machine (ours and the service's, which inherits this).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.subscribers * 2 + 1024)), hard))

    from prognetwork.users.keys import generate_pem

    pem = generate_pem()
    state = Path(tempfile.mkdtemp(prefix="prog-bench-stream-"))
    with database() as database_url:
        services = Services({
            "PROG_ENV": "development", "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
            "PROG_STATE_DIR": str(state), "JWT_SIGNING_KEYS": pem,
        })
        stop, peak = threading.Event(), [0]
        try:
            users_url = services.start("user-service", free_port())
            stream_url = services.start("event-streaming", free_port(), **issuer_env(users_url))
            watcher = threading.Thread(target=watch_rss, args=(services.processes[-1].pid, stop, peak), daemon=True)
            watcher.start()
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
            results = asyncio.run(measure(args, stream_url, admin_token(pem), database_url))
        finally:
            stop.set()
            services.stop()

    streaming, baseline = results["streaming"], results["baseline"]
    print(f"{args.subscribers} subscribers, {args.rate:g} events/s for {args.seconds:g}s")
    print(f"{'fan-out':<16}{'deliveries/s':>14}{'p50 ms':>10}{'p99 ms':>10}{'lost':>8}{'dup':>6}")
    for name, r in (("streaming (SSE)", streaming), ("redis pub/sub", baseline)):
        print(f"{name:<16}{r['deliveries_per_s']:>14.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
              f"{r['lost']:>8}{r['duplicated']:>6}")
    print(f"streaming service peak RSS: {peak[0] / 2**20:.1f} MiB")
    print(json.dumps({
        "subscribers": args.subscribers, "rate": args.rate, "events": streaming["events"],
        "deliveries_per_s": streaming["deliveries_per_s"], "p50_ms": streaming["p50_ms"],
        "p99_ms": streaming["p99_ms"], "lost": streaming["lost"], "duplicated": streaming["duplicated"],
        "peak_rss_mb": round(peak[0] / 2**20, 1), "baseline_deliveries_per_s": baseline["deliveries_per_s"],
        "baseline_p99_ms": baseline["p99_ms"], "baseline_lost": baseline["lost"],
    }))


if __name__ == "__main__":
    main()
