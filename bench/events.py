"""The event log's write ceiling: appends per second against plain inserts, and a reader's check.

In one run, against a throwaway database (created, migrated with the project's migrations,
dropped), `--writers` concurrent writers (32) in this process each commit transaction after
transaction for `--seconds` (15), through the kit's SQLAlchemy sessions as services do:

- events: each transaction appends one event (`kit.events.append`), with the process's
  sequencer running as in a service (`kit.events.Sequencer`); a commit returns once its event
  is sequenced. `appends_per_s` counts the events committed over the time until the last one
  was sequenced (readable in order), not until the last commit;
- baseline: each transaction inserts the same row into a plain table with no ordering machinery
  (the same columns, a primary key on the id, nothing else).

The two are measured in interleaved rounds (`--rounds`, 2), each figure the median of its rounds.
Meanwhile a reader tails the log as every consumer does ("seq > the last I saw", woken by
NOTIFY) from the start; at the end it checks it saw every committed event exactly once, in seq
order (an event it skipped over would be lost to it for good).

    python bench/events.py [--writers 32] [--seconds 15] [--rounds 2]

The last line printed is one JSON object: writers, appends_per_s, baseline_inserts_per_s,
ratio (appends ÷ inserts), lost, duplicated, out_of_order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from sqlalchemy import Boolean, Column, DateTime, MetaData, String, Table, Uuid, func, insert
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import database  # noqa: E402
from prognetwork.kit import db as kit_db  # noqa: E402
from prognetwork.kit import events, retry  # noqa: E402

TYPE = "bench.appended"
READ_BATCH = 1000

plain = Table(
    "bench_plain",
    MetaData(),
    Column("id", Uuid, primary_key=True),
    Column("type", String(200), nullable=False),
    Column("tenant_id", Uuid),
    Column("user_id", Uuid),
    Column("private", Boolean, nullable=False, server_default="false"),
    Column("payload", JSONB, nullable=False),
    Column("trace_context", String(200)),
    Column("occurred_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

Write = Callable[[AsyncSession, dict], Awaitable[uuid.UUID]]


async def append_event(session: AsyncSession, payload: dict) -> uuid.UUID:
    return (await events.append(session, TYPE, payload, user_id=uuid.UUID(payload["user_id"]))).id


async def insert_row(session: AsyncSession, payload: dict) -> uuid.UUID:
    row_id = uuid.uuid4()
    await session.execute(insert(plain).values(id=row_id, type=TYPE, payload=payload,
                                               user_id=uuid.UUID(payload["user_id"])))
    return row_id


@dataclass
class Phase:
    name: str
    seconds: float = 0.0  # from the first write to the last one readable
    committed: list[uuid.UUID] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # each transaction, begin to commit returned

    @property
    def rate(self) -> float:
        return len(self.committed) / self.seconds

    def latency_ms(self, quantile: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[quantile - 1] * 1000


async def run_writers(sessions, write: Write, writers: int, seconds: float, phase: Phase) -> None:
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            payload = {"user_id": str(uuid.uuid4()), "email": f"writer-{w}-{n}@example.com", "name": f"Writer {w}"}
            started = time.perf_counter()
            async with sessions() as session, session.begin():
                written = await write(session, payload)
            phase.latencies.append(time.perf_counter() - started)
            phase.committed.append(written)  # its commit returned: it is acknowledged
            n += 1

    tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)


async def pending(conn: asyncpg.Connection) -> bool:
    if await conn.fetchval("SELECT to_regclass('event_pending') IS NULL"):
        return False  # a log without a sequencer: committed is readable
    return await conn.fetchval("SELECT EXISTS (SELECT FROM event_pending)")


class Reader:
    """Tails the log from the start, as consumers do: the events after the last seq it saw."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[int, uuid.UUID]] = []
        self.last = 0
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.url)
        listener = await asyncpg.connect(self.url)
        await listener.add_listener(events.CHANNEL, lambda *_: self.wake.set())
        try:
            while not stop.is_set():
                self.wake.clear()
                if await self.read(conn) < READ_BATCH:
                    await retry.pause(0.1, stop, self.wake)
            await self.read(conn)
        finally:
            await listener.close()
            await conn.close()

    async def read(self, conn: asyncpg.Connection) -> int:
        rows = await conn.fetch("SELECT seq, id FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                                self.last, READ_BATCH)
        self.seen += [(row["seq"], row["id"]) for row in rows]
        if rows:
            self.last = rows[-1]["seq"]
        return len(rows)


async def measure(url: str, writers: int, seconds: float, rounds: int) -> tuple[list[Phase], list[Phase], dict]:
    conn = await asyncpg.connect(url)
    await conn.execute(
        "CREATE TABLE bench_plain (id uuid PRIMARY KEY, type varchar(200) NOT NULL, tenant_id uuid, user_id uuid, "
        "private boolean NOT NULL DEFAULT false, payload jsonb NOT NULL, trace_context varchar(200), "
        "occurred_at timestamptz NOT NULL DEFAULT now())")
    engine = kit_db.create_engine(url, pool_size=writers)
    sessions = kit_db.sessionmaker(engine)
    stop = asyncio.Event()
    background = []
    sequencer = events.Sequencer(url, engine) if hasattr(events, "Sequencer") else None
    if sequencer is not None:  # as kit.app runs one in every service process
        background.append(asyncio.create_task(sequencer.run(stop)))
    reader = Reader(url)
    reading = asyncio.create_task(reader.run(stop))
    appends: list[Phase] = []
    inserts: list[Phase] = []
    try:
        for _ in range(rounds):
            phase = Phase("baseline")
            started = time.perf_counter()
            await run_writers(sessions, insert_row, writers, seconds, phase)
            phase.seconds = time.perf_counter() - started
            inserts.append(phase)

            phase = Phase("events")
            started = time.perf_counter()
            await run_writers(sessions, append_event, writers, seconds, phase)
            while await pending(conn):  # readable in order only once sequenced
                await asyncio.sleep(0.005)
            phase.seconds = time.perf_counter() - started
            appends.append(phase)
        stop.set()
        await reading
        in_log = {row["id"] for row in await conn.fetch("SELECT id FROM events WHERE type = $1", TYPE)}
    finally:
        stop.set()
        await asyncio.gather(*background, reading, return_exceptions=True)
        await engine.dispose()
        await conn.close()
    committed = {event_id for phase in appends for event_id in phase.committed}
    seen_ids = [event_id for _, event_id in reader.seen]
    seqs = [seq for seq, _ in reader.seen]
    check = {
        "committed": len(committed),
        "in_log": len(in_log),
        "lost": len(committed - set(seen_ids)),
        "duplicated": len(seen_ids) - len(set(seen_ids)),
        "out_of_order": sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b <= a),
        "batches": sequencer.batches if sequencer is not None else None,
    }
    return appends, inserts, check


def median(phases: list[Phase], value: Callable[[Phase], float]) -> float:
    return statistics.median(value(p) for p in phases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.writers < 1 or args.seconds <= 0 or args.rounds < 1:
        raise SystemExit("--writers, --seconds and --rounds must be positive")
    with database() as url:
        appends, inserts, check = asyncio.run(measure(url, args.writers, args.seconds, args.rounds))
    appends_rate, inserts_rate = median(appends, lambda p: p.rate), median(inserts, lambda p: p.rate)
    print(f"{args.writers} writers, {args.rounds} rounds of {args.seconds:g} s each (medians)")
    print(f"{'':36}{'per second':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for name, phases, rate in (("events (append, sequenced)", appends, appends_rate),
                               ("baseline (plain insert)", inserts, inserts_rate)):
        print(f"{name:36}{rate:>12,.0f}{median(phases, lambda p: p.latency_ms(50)):>9.1f}"
              f"{median(phases, lambda p: p.latency_ms(99)):>9.1f}")
    print(f"reader: {check['committed']:,} events committed, {check['in_log']:,} in the log, "
          f"lost {check['lost']}, duplicated {check['duplicated']}, out of order {check['out_of_order']}"
          + (f"; the sequencer moved them in {check['batches']:,} batches" if check["batches"] is not None else ""))
    print(json.dumps({
        "writers": args.writers,
        "appends_per_s": round(appends_rate),
        "baseline_inserts_per_s": round(inserts_rate),
        "ratio": round(appends_rate / inserts_rate, 3),
        "lost": check["lost"],
        "duplicated": check["duplicated"],
        "out_of_order": check["out_of_order"],
    }))


if __name__ == "__main__":
    main()
