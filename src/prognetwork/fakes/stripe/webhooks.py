"""Webhook delivery, signed as Stripe signs: `Stripe-Signature: t=<unix seconds>,v1=<hex
HMAC-SHA256(secret, "<t>.<raw body>")>`, which `stripe.Webhook.construct_event` verifies.

Each endpoint has its own queue and one delivery task, so events reach an endpoint one at a time
in the order they were queued, and a failing endpoint delays only its own later events. A non-2xx
answer or a connection error is retried after each wait in `RETRY_WAITS_SECONDS`, then the
delivery is recorded as failed. An event's body is serialised once, so a retry or a resend
carries the same bytes under a fresh signature timestamp. Every attempt is recorded.

While paused, newly published events are held; resuming queues the held ones first-in-first-out
or in reverse (to exercise a receiver's handling of events out of order). A resend is an explicit
request and is queued even while paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import aiohttp

from prognetwork.fakes.stripe.params import Obj

RETRY_WAITS_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
DELIVERY_TIMEOUT_SECONDS = 10.0
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


def signature(payload: bytes, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class Dispatcher:
    def __init__(self, urls: list[str], secret: str, log: Callable[[Obj], None]) -> None:
        self.urls = urls
        self.secret = secret
        self.log = log
        self.paused = False
        self.held: list[str] = []
        self.bodies: dict[str, bytes] = {}
        self.endpoint_status: dict[str, dict[str, str]] = {}  # event id → url → held|pending|delivered|failed
        self.attempts: list[Obj] = []
        self._types: dict[str, str] = {}
        self._queues: dict[str, asyncio.Queue[str]] = {url: asyncio.Queue() for url in urls}
        self._tasks: list[asyncio.Task[None]] = []
        self._client: aiohttp.ClientSession | None = None

    def start(self) -> None:
        # aiohttp (a runtime dependency: the fake runs from the service images too). trust_env stays
        # off: a proxy configured for the outside world must not intercept local receivers.
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_SECONDS))
        self._tasks = [asyncio.create_task(self._work(url)) for url in self.urls]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.close()

    def publish(self, event: Obj) -> None:
        # Stripe sends pretty-printed JSON; a receiver that verifies a re-serialised body fails.
        self.bodies[event["id"]] = json.dumps(event, indent=2).encode()
        self._types[event["id"]] = event["type"]
        if self.paused:
            self.held.append(event["id"])
            self.endpoint_status[event["id"]] = dict.fromkeys(self.urls, "held")
        else:
            self._queue(event["id"])

    def resend(self, event_id: str) -> None:
        """Deliver `event_id` again to every endpoint; KeyError if there is no such event."""
        if event_id not in self.bodies:
            raise KeyError(event_id)
        self._queue(event_id)

    def pause(self) -> None:
        self.paused = True

    def resume(self, reverse: bool = False) -> None:
        self.paused = False
        released, self.held = self.held, []
        for event_id in reversed(released) if reverse else released:
            self._queue(event_id)

    def status(self, event_id: str) -> str:
        """One word for an event's delivery to all endpoints, the least advanced one winning."""
        states = set(self.endpoint_status.get(event_id, {}).values())
        return next((s for s in ("held", "pending", "failed") if s in states), "delivered")

    def _queue(self, event_id: str) -> None:
        self.endpoint_status[event_id] = dict.fromkeys(self.urls, "pending")
        for queue in self._queues.values():
            queue.put_nowait(event_id)

    async def _work(self, url: str) -> None:
        queue = self._queues[url]
        while True:
            event_id = await queue.get()
            self.endpoint_status[event_id][url] = await self._deliver(url, event_id)

    async def _deliver(self, url: str, event_id: str) -> str:
        assert self._client is not None
        body = self.bodies[event_id]
        attempt = 0
        while True:
            attempt += 1
            status_code: int | None = None
            error: str | None = None
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": signature(body, self.secret, int(time.time())),
                "User-Agent": USER_AGENT,
            }
            try:
                async with self._client.post(url, data=body, headers=headers) as response:
                    status_code = response.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            record = {
                "event_id": event_id,
                "type": self._types[event_id],
                "url": url,
                "attempt": attempt,
                "status_code": status_code,
                "error": error,
                "at": time.time(),
            }
            self.attempts.append(record)
            self.log({"kind": "webhook", **record})
            if status_code is not None and 200 <= status_code < 300:
                return "delivered"
            if attempt > len(RETRY_WAITS_SECONDS):
                return "failed"
            await asyncio.sleep(RETRY_WAITS_SECONDS[attempt - 1])
