"""The platform's admin API, as the console's pages call it (through the gateway, as the operator).

Each function is one call, or one small walk over calls (the event log), returning the decoded
JSON; failures are `gateway.ApiError` with a message for people.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prognetwork.admin.gateway import ApiError
from prognetwork.admin.signin import Operator

PAGE = 25
EVENTS_PAGE = 50
EVENTS_CHUNK = 500  # the poll endpoint's largest page
EVENTS_MAX_CHUNKS = 20  # "load older" looks back at most this many chunks for a filtered type
FIRST_PROBE = 1024
USER_ACTIONS = ("disable", "enable", "revoke-sessions", "resend-verification")


async def users(op: Operator, q: str, status: str, after: str) -> dict[str, Any]:
    return await op.get("/api/v1/admin/users", q=q, status=status, after=after, limit=PAGE)


async def user(op: Operator, user_id: str) -> dict[str, Any]:
    return await op.get(f"/api/v1/admin/users/{user_id}")


async def act_on_user(op: Operator, user_id: str, action: str) -> None:
    assert action in USER_ACTIONS
    await op.call("POST", f"/api/v1/admin/users/{user_id}/{action}")


async def set_role(op: Operator, user_id: str, role: str) -> None:
    await op.call("PATCH", f"/api/v1/admin/users/{user_id}", body={"role": role})


async def tenants(op: Operator, q: str, after: str) -> dict[str, Any]:
    return await op.get("/api/v1/admin/tenants", q=q, after=after, limit=PAGE)


async def tenant(op: Operator, tenant_id: str) -> dict[str, Any]:
    return await op.get(f"/api/v1/admin/tenants/{tenant_id}")


@dataclass
class Subscription:
    state: str  # "ok", "none" (billing has no subscription for it) or "unavailable"
    data: dict[str, Any]
    message: str = ""


async def subscription(op: Operator, tenant_id: str) -> Subscription:
    try:
        data = await op.get(f"/api/v1/admin/billing/subscriptions/{tenant_id}")
    except ApiError as exc:
        if exc.status == 404:
            return Subscription("none", {}, "Billing has no subscription for this tenant (the free plan).")
        if exc.unavailable or exc.status >= 500:
            return Subscription("unavailable", {}, "Not available: the billing service is not answering.")
        return Subscription("unavailable", {}, f"Not available: {exc.message}")
    return Subscription("ok", data if isinstance(data, dict) else {})


async def emails(op: Operator, recipient: str, status: str, before: str) -> dict[str, Any]:
    return await op.get("/api/v1/admin/emails", recipient=recipient, status=status, before=before, limit=PAGE)


async def audit(op: Operator, actor: str, target: str, action: str, before: str) -> dict[str, Any]:
    return await op.get(
        "/api/v1/admin/audit", actor=actor, target=target, action=action, before=before, limit=PAGE
    )


async def verify_audit(op: Operator) -> dict[str, Any]:
    return await op.get("/api/v1/admin/audit/verify")


async def events_after(op: Operator, after: int, limit: int, types: str = "") -> list[dict[str, Any]]:
    """The first visible events after `after`. Events the log no longer keeps (retention: the poll
    answers 410) are simply absent: the answer starts at the oldest event still kept."""
    try:
        body = await op.get("/api/v1/events", after=after, limit=limit, types=types)
    except ApiError as exc:
        if exc.status != 410:
            raise
        body = await op.get("/api/v1/events", limit=limit, types=types)
    return list(body.get("events", [])) if isinstance(body, dict) else []


async def head(op: Operator, known: int) -> int:
    """The newest sequence number the operator can see (0 for an empty log).

    The poll endpoint only reads forwards, so the end is found by probing: forwards from `known`
    (the last head found) when it still holds, else by doubling and then bisecting, ~2·log2(n)
    calls of one event each.
    """
    if known > 0 and [e["seq"] for e in await events_after(op, known - 1, 1)] == [known]:
        low = known
        while batch := await events_after(op, low, EVENTS_CHUNK):
            low = batch[-1]["seq"]
        return low
    low, high = 0, FIRST_PROBE  # low: a visible seq (or 0); nothing visible is known above high yet
    while probe := await events_after(op, high, 1):
        low = probe[0]["seq"]
        high = low * 2
    while high > low:  # now nothing visible lies above high
        middle = (low + high) // 2
        probe = await events_after(op, middle, 1)
        if probe:
            low = probe[0]["seq"]
        else:
            high = middle
    return low


async def events_before(
    op: Operator, before: int, types: str, want: int = EVENTS_PAGE
) -> tuple[list[dict[str, Any]], bool]:
    """Up to `want` visible events (of `types`, if given) with a sequence below `before`, newest
    first, and whether older ones may exist (False once the walk back reached the log's start)."""
    found: list[dict[str, Any]] = []
    end = before  # exclusive
    for _ in range(EVENTS_MAX_CHUNKS):
        if end <= 1:
            return list(reversed(found[-want:])), len(found) > want
        after = max(0, end - 1 - EVENTS_CHUNK)
        chunk = [e for e in await events_after(op, after, EVENTS_CHUNK, types) if e["seq"] < end]
        found = chunk + found
        end = after + 1
        if len(found) >= want:
            break
    return list(reversed(found[-want:])), end > 1 or len(found) > want


@dataclass
class Known:
    """What this process learnt about the event log: where it ended last time someone looked."""

    head: int = 0


VERDICT_SECONDS = 30.0


@dataclass
class Verdicts:
    """The audit chain's latest verification, shared by every page view for VERDICT_SECONDS: it
    reads the whole log, and one at a time is enough."""

    verdict: dict[str, Any] | None = None
    at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, verify: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        async with self.lock:
            if self.verdict is None or time.monotonic() - self.at > VERDICT_SECONDS:
                self.verdict = await verify()
                self.at = time.monotonic()
            return self.verdict
