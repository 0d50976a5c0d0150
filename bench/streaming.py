"""Event streaming fan-out: N SSE subscribers while events are appended at a steady rate.

One streaming-service process serves N subscribers (one connection each, admin tokens so
each sees every event) while a separate process appends events to the log at `--rate` per
second, each payload carrying its append wall time (each append at its own time, with a
sequencer in that process as in every service). Every subscriber checks it got every event
once, in order; latency is receive time minus append time. The baseline, in the same run: the
same events published through Redis pub/sub to N subscribers. The client floor: the same
subscribers against a trivial server writing pre-rendered frames at the same rate every 50 ms,
which is what the measuring side and the machine add, right now.

The subscribers are protocol callbacks on raw connections, all in this one process (httptools
decodes the HTTP framing, hiredis the Redis replies, both in C). With a task per subscriber in
aiohttp or redis.asyncio the client needed 40 % (SSE) to 90 % (Redis) of a core at the default
load, and under contention it, not the server, set the tail.

Each row: deliveries/s, latency p50/p99/max, lost and duplicated deliveries, the server's and
this client's CPU over the phase (100 % = one core) and the server's CPU time per delivery.
Then where the latency goes, per event: commit (the append's transaction, or the publish),
pickup (from its return to the first subscriber's read) and spread (first to last subscriber).

    python bench/streaming.py [--subscribers 1000] [--rate 60] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections.abc import Callable
from pathlib import Path

import hiredis
import httptools
import jwt
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.processes import issuer_env  # noqa: E402

from bench.common import REDIS_URL, Services, database, free_port  # noqa: E402

CHANNEL = b"bench:stream"
DRAIN_SECONDS = 15.0  # after the last append, how long subscribers may take to catch up
CONNECT_WAVE = 100  # connections opened before letting the loop breathe
FLOOR_INTERVAL_SECONDS = 0.05  # the trivial server writes what came in since its last write this often
PRODUCER_CONNECTIONS = 8  # appends in flight at once at most
STAGES = ("commit", "pickup", "spread")


class Arrivals:
    """When the first and the last subscriber got each event (by its number `n`)."""

    def __init__(self, total: int) -> None:
        self.first = array("d", [float("inf")]) * total
        self.last = array("d", [0.0]) * total


class Tally:
    """What one subscriber saw."""

    __slots__ = ("count", "last", "duplicated", "latencies", "last_at", "arrivals")

    def __init__(self, arrivals: Arrivals) -> None:
        self.count = 0
        self.last = 0
        self.duplicated = 0
        self.latencies = array("d")
        self.last_at = 0.0
        self.arrivals = arrivals

    def seen(self, message: bytes, now: float) -> None:
        """One SSE message (`id: N\\n…{"n": <n>, "t": <send time>}…`); anything else is ignored."""
        if not message.startswith(b"id: "):
            return
        seq = int(message[4 : message.index(b"\n")])
        if seq <= self.last:
            self.duplicated += 1
            return
        start = message.index(b'{"n": ') + 6
        comma = message.index(b", ", start)
        n, sent_at = int(message[start:comma]), float(message[comma + 7 : message.index(b"}", comma)])
        self.last = seq
        self.count += 1
        self.latencies.append(now - sent_at)
        self.last_at = now
        arrivals = self.arrivals
        if now < arrivals.first[n]:
            arrivals.first[n] = now
        if now > arrivals.last[n]:
            arrivals.last[n] = now


def frame(n: int, sent_at: float) -> bytes:
    """An event as the streaming service renders it, carrying its send time in `t`."""
    data = {"id": str(uuid.uuid4()), "seq": n + 1, "type": "bench.tick", "payload": {"n": n, "t": sent_at},
            "user_id": None, "tenant_id": None, "occurred_at": "2024-01-01T00:00:00.000000+00:00"}
    return b"id: %d\nevent: bench.tick\ndata: %s\n\n" % (n + 1, json.dumps(data).encode())


# -- the producer (its own process, so its pace does not depend on the subscribers' loop) ---

def produce(mode: str, target: str, rate: float, seconds: float, results) -> None:
    asyncio.run(_produce(mode, target, rate, seconds, results))


async def _produce(mode: str, target: str, rate: float, seconds: float, results) -> None:
    """Appends (or publishes) `rate` events a second; puts when each was sent and when its commit
    (or publish) returned. Each append starts at its own time whether or not the ones before have
    committed, so a slow commit does not lower the load; publishes go one after the other on one
    connection, so they arrive in order (each takes a fraction of a millisecond)."""
    total = int(rate * seconds)
    sent, done = array("d", [0.0]) * total, array("d", [0.0]) * total
    started = time.time()
    if mode == "postgres":
        from prognetwork.kit import db, events

        engine = db.create_engine(target, pool_size=PRODUCER_CONNECTIONS // 2)
        sessions = db.sessionmaker(engine)
        # As in every service process: commits that appended wait for this process's sequencer.
        sequencer, stop = events.Sequencer(target, engine), asyncio.Event()
        sequencing = asyncio.create_task(sequencer.run(stop))
        in_flight = asyncio.Semaphore(PRODUCER_CONNECTIONS)

        async def emit(n: int) -> None:
            async with in_flight:  # beyond that many, late: the rate drops and deliveries/s shows it
                sent[n] = time.time()
                async with sessions() as session, session.begin():
                    await events.append(session, "bench.tick", {"n": n, "t": sent[n]})
                done[n] = time.time()
    else:
        from redis.asyncio import Redis

        redis = Redis.from_url(target)

        async def emit(n: int) -> None:
            sent[n] = time.time()
            await redis.publish(CHANNEL, frame(n, sent[n]))
            done[n] = time.time()

    emitting = []
    for n in range(total):
        delay = started + n / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing a steady rate
        if mode == "postgres":
            emitting.append(asyncio.create_task(emit(n)))
        else:
            await emit(n)
    await asyncio.gather(*emitting)
    results.put({"sent": sent, "done": done, "started": started, "finished": time.time()})
    if mode == "postgres":
        stop.set()
        await sequencing
        await engine.dispose()
    else:
        await redis.aclose()


# -- the client floor: a trivial SSE server (its own process) --------------------------------

def serve_floor(port: int, subscribers: int, rate: float, seconds: float, results) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve_floor(port, subscribers, rate, seconds, results))


async def _serve_floor(port: int, subscribers: int, rate: float, seconds: float, results) -> None:
    """Answers every request with an SSE stream; once all are connected, writes events at `rate`,
    each frame rendered once and written to every stream, what came in since the last write as one
    chunk every FLOOR_INTERVAL_SECONDS. Ends once every stream is closed."""
    streams: list[asyncio.Transport] = []
    everyone, nobody = asyncio.Event(), asyncio.Event()
    closed = 0

    class Stream(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                     b"transfer-encoding: chunked\r\n\r\nd\r\nretry: 3000\n\n\r\n")
                streams.append(self.transport)
                if len(streams) == subscribers:
                    everyone.set()

        def connection_lost(self, exc: Exception | None) -> None:
            nonlocal closed
            closed += 1
            if closed == subscribers:
                nobody.set()

    server = await asyncio.get_running_loop().create_server(Stream, "127.0.0.1", port, backlog=4096)
    results.put("listening")
    await everyone.wait()
    total, n, started = int(rate * seconds), 0, time.time()
    sent, done = array("d"), array("d")
    while n < total:
        await asyncio.sleep(max(0.0, started + n / rate - time.time()))
        frames = []
        while n < total and started + n / rate <= time.time():
            sent.append(time.time())
            frames.append(frame(n, sent[-1]))
            n += 1
        done.extend([time.time()] * (len(sent) - len(done)))  # rendered: its "commit"
        body = b"".join(frames)
        chunk = b"%x\r\n%b\r\n" % (len(body), body)
        for transport in streams:
            transport.write(chunk)
        await asyncio.sleep(FLOOR_INTERVAL_SECONDS)
    results.put({"sent": sent, "done": done, "started": started, "finished": time.time()})
    await asyncio.wait_for(nobody.wait(), DRAIN_SECONDS + 30)
    server.close()


# -- subscribers: protocol callbacks, no task per subscriber ---------------------------------

class SseReader(asyncio.Protocol):
    """One SSE subscriber: sends the request, then hands every complete message to its tally."""

    def __init__(self, request: bytes, tally: Tally, connected: asyncio.Event, ended: asyncio.Future) -> None:
        self.request = request
        self.tally = tally
        self.connected = connected
        self.ended = ended
        self.parser = httptools.HttpResponseParser(self)
        self.buffer = b""
        self.now = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.now = time.time()
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status != 200:
            self.transport.close()
            if not self.ended.done():
                self.ended.set_exception(RuntimeError(f"the stream answered {status}"))
            return
        self.connected.set()

    def on_body(self, body: bytes) -> None:
        *messages, self.buffer = (self.buffer + body).split(b"\n\n")
        for message in messages:
            self.tally.seen(message, self.now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


class RedisReader(asyncio.Protocol):
    """One Redis pub/sub subscriber, parsing the replies with hiredis."""

    def __init__(self, tally: Tally, connected: asyncio.Event, ended: asyncio.Future) -> None:
        self.tally = tally
        self.connected = connected
        self.ended = ended
        self.reader = hiredis.Reader()

    def connection_made(self, transport) -> None:
        transport.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%b\r\n" % (len(CHANNEL), CHANNEL))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if reply[0] == b"message":
                self.tally.seen(reply[2], now)
            elif reply[0] == b"subscribe":
                self.connected.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


Reader = Callable[[Tally, asyncio.Event, asyncio.Future], asyncio.Protocol]


async def subscribe(host: str, port: int, reader: Reader, tally: Tally, connected: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    transport, _ = await loop.create_connection(lambda: reader(tally, connected, ended), host, port)
    try:
        await ended
    finally:
        transport.close()


def sse_reader(url: str, token: str) -> Reader:
    host, port = host_port(url)
    request = (f"GET /v1/events/stream HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
               f"Accept: text/event-stream\r\n\r\n").encode()
    return lambda tally, connected, ended: SseReader(request, tally, connected, ended)


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].split("/", 1)[0].partition(":")
    return host, int(port)


# -- one phase: connect, produce, drain, count -----------------------------------------------

async def run_phase(subscribers: int, address: tuple[str, int], reader: Reader, source: multiprocessing.Process,
                    results, server_pid: int, rate: float, seconds: float) -> dict:
    """Connect the subscribers, start `source` (which puts its outcome on `results`; already
    started when it is the server), wait until every subscriber has it all or DRAIN_SECONDS
    passed, and count."""
    arrivals = Arrivals(int(rate * seconds))
    tallies = [Tally(arrivals) for _ in range(subscribers)]
    connected = [asyncio.Event() for _ in range(subscribers)]
    tasks: list[asyncio.Task] = []
    for tally, flag in zip(tallies, connected, strict=True):
        tasks.append(asyncio.create_task(subscribe(*address, reader, tally, flag)))
        if len(tasks) % CONNECT_WAVE == 0:
            await asyncio.sleep(0)  # let connections open in waves rather than all at once
    everyone = asyncio.ensure_future(asyncio.gather(*(c.wait() for c in connected)))
    await asyncio.wait([everyone, *tasks], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if not everyone.done():
        failed = next((t for t in tasks if t.done()), None)
        raise SystemExit(f"subscribers did not connect: {failed.exception() if failed else 'timed out'}")

    if not source.is_alive():
        source.start()
    cpu = CpuClock(server_pid)
    outcome = await asyncio.to_thread(results.get, True, seconds * 3 + 60)
    expected = len(outcome["sent"])
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and any(t.count < expected for t in tallies):
        await asyncio.sleep(0.1)
    usage = cpu.read()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.to_thread(source.join, 30)
    if source.is_alive():
        source.terminate()

    delivered = sum(t.count for t in tallies)
    last_delivery = max((t.last_at for t in tallies), default=outcome["finished"])
    latencies = sorted(x for t in tallies for x in t.latencies)

    sent, done = outcome["sent"], outcome["done"]
    got = [n for n in range(expected) if arrivals.last[n]]
    stages = {
        "commit": sorted(done[n] - sent[n] for n in range(expected)),
        "pickup": sorted(arrivals.first[n] - done[n] for n in got),
        "spread": sorted(arrivals.last[n] - arrivals.first[n] for n in got),
    }
    return {
        **{f"{stage}_p{p}_ms": ms(values, p / 100) for stage, values in stages.items() for p in (50, 99)},
        "events": expected,
        "delivered": delivered,
        "deliveries_per_s": round(delivered / max(1e-9, last_delivery - outcome["started"]), 1),
        "p50_ms": ms(latencies, 0.50),
        "p99_ms": ms(latencies, 0.99),
        "max_ms": ms(latencies, 1.0),
        "lost": expected * subscribers - delivered,
        "duplicated": sum(t.duplicated for t in tallies),
        **usage,
        "server_us_per_delivery": round(usage["server_cpu_s"] * 1e6 / max(1, delivered), 1),
    }


def ms(ordered: list[float], p: float) -> float:
    """The `p` quantile of sorted seconds, in milliseconds."""
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 1) if ordered else 0.0


class CpuClock:
    """CPU time of this process and of the server since it was made."""

    def __init__(self, server_pid: int) -> None:
        self.client = psutil.Process()
        self.server = psutil.Process(server_pid)
        self.started = time.monotonic()
        self.client_at = self._cpu(self.client)
        self.server_at = self._cpu(self.server)

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def read(self) -> dict[str, float]:
        """Each side's CPU time over the wall time (100 = one core), and the server's in seconds."""
        wall = time.monotonic() - self.started
        server = self._cpu(self.server) - self.server_at
        return {"client_cpu_pct": round(100 * (self._cpu(self.client) - self.client_at) / wall),
                "server_cpu_pct": round(100 * server / wall), "server_cpu_s": server}


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


def redis_pid() -> int:
    """The local Redis server's process, whose CPU the baseline row reports."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


async def measure(args: argparse.Namespace, stream_url: str, stream_pid: int, token: str,
                  database_url: str) -> dict[str, dict]:
    context = multiprocessing.get_context("spawn")

    def producer(mode: str, target: str):
        results = context.Queue()
        process = context.Process(target=produce, args=(mode, target, args.rate, args.seconds, results), daemon=True)
        return process, results

    streaming = await run_phase(
        args.subscribers, host_port(stream_url), sse_reader(stream_url, token),
        *producer("postgres", database_url), stream_pid, args.rate, args.seconds,
    )
    baseline = await run_phase(
        args.subscribers, host_port(REDIS_URL), RedisReader, *producer("redis", REDIS_URL),
        redis_pid(), args.rate, args.seconds,
    )
    port = free_port()
    results = context.Queue()
    server = context.Process(
        target=serve_floor, args=(port, args.subscribers, args.rate, args.seconds, results), daemon=True)
    server.start()
    if await asyncio.to_thread(results.get, True, 60) != "listening":
        raise SystemExit("the client floor's server did not start")
    floor = await run_phase(
        args.subscribers, ("127.0.0.1", port), sse_reader(f"http://127.0.0.1:{port}", token),
        server, results, server.pid, args.rate, args.seconds,
    )
    return {"streaming": streaming, "baseline": baseline, "floor": floor}


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
            stream_pid = services.processes[-1].pid
            watcher = threading.Thread(target=watch_rss, args=(stream_pid, stop, peak), daemon=True)
            watcher.start()
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
            results = asyncio.run(measure(args, stream_url, stream_pid, admin_token(pem), database_url))
        finally:
            stop.set()
            services.stop()

    streaming, baseline, floor = results["streaming"], results["baseline"], results["floor"]
    print(f"{args.subscribers} subscribers, {args.rate:g} events/s for {args.seconds:g}s")
    print(f"{'fan-out':<16}{'deliveries/s':>14}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'lost':>7}{'dup':>5}"
          f"{'server CPU':>12}{'µs/delivery':>13}{'client CPU':>12}")
    for name, r in (("streaming (SSE)", streaming), ("redis pub/sub", baseline), ("client floor", floor)):
        print(f"{name:<16}{r['deliveries_per_s']:>14.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}"
              f"{r['lost']:>7}{r['duplicated']:>5}{str(r['server_cpu_pct']) + ' %':>12}"
              f"{r['server_us_per_delivery']:>13.1f}{str(r['client_cpu_pct']) + ' %':>12}")
    print("where the latency goes (p50 / p99 ms): commit = the append's transaction (or the publish),")
    print("pickup = from its return to the first subscriber's read, spread = first to last subscriber")
    for name, r in (("streaming (SSE)", streaming), ("redis pub/sub", baseline), ("client floor", floor)):
        print(f"{name:<16}" + "".join(
            f"{stage:>8} {r[stage + '_p50_ms']:>6.1f} / {r[stage + '_p99_ms']:<7.1f}" for stage in STAGES))
    ratio = round(streaming["deliveries_per_s"] / max(1e-9, baseline["deliveries_per_s"]), 2)
    print(f"deliveries/s streaming ÷ Redis pub/sub: {ratio}; streaming service peak RSS: {peak[0] / 2**20:.1f} MiB; "
          f"load average at the end: {' '.join(f'{x:.2f}' for x in psutil.getloadavg())}")
    print(json.dumps({
        "subscribers": args.subscribers, "rate": args.rate, "events": streaming["events"],
        "deliveries_per_s": streaming["deliveries_per_s"], "p50_ms": streaming["p50_ms"],
        "p99_ms": streaming["p99_ms"], "lost": streaming["lost"], "duplicated": streaming["duplicated"],
        "peak_rss_mb": round(peak[0] / 2**20, 1), "server_cpu_pct": streaming["server_cpu_pct"],
        "server_us_per_delivery": streaming["server_us_per_delivery"],
        "baseline_deliveries_per_s": baseline["deliveries_per_s"], "baseline_p50_ms": baseline["p50_ms"],
        "baseline_p99_ms": baseline["p99_ms"], "baseline_lost": baseline["lost"], "ratio": ratio,
        "client_floor_p99_ms": floor["p99_ms"],
    }))


if __name__ == "__main__":
    main()
