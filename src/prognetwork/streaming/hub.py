"""Live fan-out: one tailer per process reads the event log, every subscriber gets its share.

The tailer wakes on LISTEN/NOTIFY (and polls, in case a notification is lost), reads the
events after the last sequence it saw in batches — one query per batch, whatever the number
of subscribers — renders each event's SSE frame once, and appends it to the bounded queue of
every subscriber allowed to see it. Each replica runs its own tailer, so several replicas
each serve their own subscribers every event.

A subscriber whose queue is full is cut off (it is told so and may resume with
Last-Event-ID) rather than growing memory without bound.
"""

from __future__ import annotations

import asyncio
import uuid
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate

import asyncpg
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from prognetwork.kit import retry
from prognetwork.kit.events import Dsn, connect, listen, sequence_before_reading
from prognetwork.kit.retry import wait_for
from prognetwork.streaming.queries import HEAD, TAIL
from prognetwork.streaming.visibility import Viewer

BATCH_SIZE = 500
# At most one read of the log per this many seconds: under load, events arriving close
# together go out as one write per subscriber instead of one write per event (each write is
# a system call per subscriber); when idle, the first event is read at once.
MIN_READ_INTERVAL_SECONDS = 0.05
HEARTBEAT = b": keep-alive\n\n"


class LatencyHistogram:
    """A Prometheus histogram counted in plain numbers: an observation is a bisect and two additions.

    prometheus_client's Histogram takes two locks and walks the buckets for every observation;
    the fan-out observes every frame written to every subscriber (60,000 a second in
    `make bench-streaming`), which cost a tenth of the streaming process's CPU. Observed and
    collected on the event loop's thread only, so nothing here needs a lock.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        registry.register(self)

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative = list(accumulate(self.counts))
        les = [floatToGoString(bound) for bound in self.bounds] + ["+Inf"]
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=list(zip(les, cumulative, strict=True)), sum_value=self.sum
        )


SUBSCRIBERS = Gauge("stream_subscribers", "Clients connected to the event stream.")
DELIVERED = Counter("stream_events_delivered", "Events written to stream subscribers.")
DELIVERY_LATENCY = LatencyHistogram(
    "stream_delivery_latency_seconds",
    "From an event's occurrence to its frame being written to a subscriber.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CUT_OFF = Counter("stream_subscribers_cut_off", "Subscribers cut off for falling too far behind.")


class Frame:
    """One event, rendered once as the bytes of its SSE message."""

    __slots__ = ("seq", "type", "user_id", "tenant_id", "at", "raw")

    def __init__(
        self,
        seq: int,
        type: str,
        user_id: uuid.UUID | None,
        tenant_id: uuid.UUID | None,
        at: float,
        data: str,
    ) -> None:
        self.seq = seq
        self.type = type
        self.user_id = user_id
        self.tenant_id = tenant_id
        self.at = at
        self.raw = b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type.encode(), data.encode())

    @classmethod
    def of(cls, row) -> Frame:
        return cls(row["seq"], row["type"], row["user_id"], row["tenant_id"], row["at"], row["data"])


class Subscriber:
    """One connected client: what it may see, and the frames waiting to be written to it."""

    def __init__(self, viewer: Viewer, types: frozenset[str] | None, after: int, limit: int) -> None:
        self.viewer = viewer
        self.types = types
        self.limit = limit
        self.offered = after  # the highest sequence queued so far
        self.pending: list[Frame] = []
        self.beat = False
        self.closed = False
        self.overflowed = False
        self._waiter: asyncio.Future | None = None

    def offer(self, frames: list[Frame]) -> bool:
        """Queue those of `frames` (in sequence order) this subscriber wants; False when its queue
        filled up (what fitted is queued). One call per read of the log, not one per frame."""
        if frames[0].seq <= self.offered or self.types is not None:
            types, offered = self.types, self.offered
            frames = [f for f in frames if f.seq > offered and (types is None or f.type in types)]
            if not frames:
                return True
        room = self.limit - len(self.pending)
        fits = len(frames) <= room
        if not fits:
            frames = frames[:room]
        if frames:
            self.offered = frames[-1].seq
            self.pending += frames
            self._wake()
        return fits

    async def take(self) -> list[Frame]:
        """Everything queued, once there is something (or a heartbeat, or the end) to act on."""
        while not (self.pending or self.beat or self.closed or self.overflowed):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frames, self.pending = self.pending, []
        return frames

    def heartbeat(self) -> None:
        self.beat = True
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def cut_off(self) -> None:
        self.overflowed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Hub:
    def __init__(self, dsn: Dsn, *, queue_limit: int, poll_seconds: float, heartbeat_seconds: float) -> None:
        self.dsn = dsn
        self.queue_limit = queue_limit
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.position = 0  # the last sequence read from the log
        self.ready = asyncio.Event()  # set once `position` is known: subscribing before would leave a gap
        self.closed = False
        self.wake = asyncio.Event()
        self._subscribers: set[Subscriber] = set()
        self._everything: set[Subscriber] = set()
        self._by_user: dict[uuid.UUID, set[Subscriber]] = {}
        self._by_tenant: dict[uuid.UUID, set[Subscriber]] = {}

    # -- subscribers --------------------------------------------------------------------

    def subscribe(self, viewer: Viewer, types: frozenset[str] | None, after: int) -> Subscriber:
        sub = Subscriber(viewer, types, after, self.queue_limit)
        self._subscribers.add(sub)
        if viewer.sees_all:
            self._everything.add(sub)
        else:
            self._by_user.setdefault(viewer.user_id, set()).add(sub)
            if viewer.tenant_id is not None:
                self._by_tenant.setdefault(viewer.tenant_id, set()).add(sub)
        SUBSCRIBERS.inc()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub not in self._subscribers:
            return
        self._subscribers.discard(sub)
        self._everything.discard(sub)
        for index, key in ((self._by_user, sub.viewer.user_id), (self._by_tenant, sub.viewer.tenant_id)):
            if key is None:
                continue
            group = index.get(key)
            if group is not None:
                group.discard(sub)
                if not group:
                    del index[key]
        SUBSCRIBERS.dec()

    def close_all(self) -> None:
        """End every stream (shutdown); clients reconnect elsewhere with Last-Event-ID."""
        self.closed = True
        for sub in list(self._subscribers):
            sub.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # -- fan-out ------------------------------------------------------------------------

    def dispatch(self, frames: list[Frame]) -> None:
        """Offer a read's frames (in sequence order) to every subscriber allowed to see them: the
        whole list to those who see everything, to the others the frames about them or their
        tenant. Each subscriber is offered one list, once per read."""
        if not frames:
            return
        behind = [sub for sub in self._everything if not sub.offer(frames)]
        by_user, by_tenant = self._by_user, self._by_tenant
        if by_user or by_tenant:
            theirs: dict[Subscriber, list[Frame]] = {}
            for frame in frames:
                for group in (
                    by_user.get(frame.user_id) if frame.user_id is not None else None,
                    by_tenant.get(frame.tenant_id) if frame.tenant_id is not None else None,
                ):
                    if group:
                        for sub in group:
                            mine = theirs.setdefault(sub, [])
                            if not mine or mine[-1] is not frame:  # about them and their tenant: once
                                mine.append(frame)
            behind += [sub for sub, mine in theirs.items() if not sub.offer(mine)]
        for sub in behind:  # after the loops: they iterate the very sets this changes
            if not sub.overflowed:
                sub.cut_off()
                self.unsubscribe(sub)
                CUT_OFF.inc()

    # -- the tailer ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Tail the log until `stop`; reconnects to PostgreSQL as often as it must: after 0.2 s
        doubling up to 5 s, or as soon as the listener is back (PostgreSQL is reachable again)."""
        reconnected = asyncio.Event()
        listener = asyncio.create_task(
            listen(self.dsn, self.wake, stop, name="streaming.listener", reconnected=reconnected)
        )
        backoff = retry.Backoff("streaming.tailer", cap=5.0)
        try:
            while not stop.is_set():
                try:
                    await self._tail(stop, backoff)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    await backoff.wait(exc, stop, reconnected, restart=True)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _tail(self, stop: asyncio.Event, backoff: retry.Backoff) -> None:
        conn = await connect(self.dsn, "prognetwork-stream-tailer")
        try:
            if not self.ready.is_set():
                # Nobody is subscribed yet, so nothing before the current head is owed to anyone.
                self.position = await conn.fetchval(HEAD)
                self.ready.set()
            loop = asyncio.get_running_loop()
            read_at = 0.0
            while not stop.is_set():
                pause = read_at + MIN_READ_INTERVAL_SECONDS - loop.time()
                if pause > 0:
                    await wait_for(stop, pause)
                self.wake.clear()
                read_at = loop.time()
                # Committed events still pending are sequenced first: the tailer reads them now
                # rather than after some process's sequencer has run.
                await sequence_before_reading(conn)
                rows = await conn.fetch(TAIL, self.position, BATCH_SIZE)
                backoff.reset()  # after a read, not the connect: a server that accepts but fails still backs off
                if rows:
                    self.position = rows[-1]["seq"]
                    if self._subscribers:
                        self.dispatch([Frame.of(row) for row in rows])
                if len(rows) < BATCH_SIZE:
                    await retry.pause(self.poll_seconds, stop, self.wake)
        finally:
            conn.terminate()

    async def beat(self, stop: asyncio.Event) -> None:
        """Heartbeat comments through every open stream, so proxies keep idle connections."""
        while not await wait_for(stop, self.heartbeat_seconds):
            for sub in self._subscribers:
                sub.heartbeat()
