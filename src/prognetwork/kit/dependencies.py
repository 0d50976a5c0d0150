"""Which dependency failures make a process unready, and how the others are reported.

The rule: readiness means "send me traffic". A dependency gates readiness only when this process
can answer nothing useful without it *and* another replica could do better — otherwise an
outage of a shared dependency takes every replica out of the load balancer at once and turns a
degraded platform into a full outage.

- PostgreSQL (and its schema revision) gates the services that declare it: every route of
  theirs reads or writes it, and a replica on the wrong schema is this replica's fault.
- Redis gates no service. Each degrades around it: the gateway keeps proxying (rate limits
  fail open), services answer reads, and what truly needs Redis (refresh, sign-out) answers
  503 problem+json per request. A Redis outage shows in `/health` ("degraded", with the
  dependency's state), in `dependency_up{service,dependency}` and in the breaker gauge
  (kit.cache), which the alerts watch.
- A service's own checks (keys loaded, event log tailed) gate it: they are about this replica.

`watch` probes the non-gating dependencies every PROBE_SECONDS in the background, so `/health`
(a liveness probe) reads a remembered state and never waits on a dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import Gauge

from prognetwork.kit import tracing

# A check: None when fine, else what is wrong (an exception means "unreachable").
Check = Callable[[], Awaitable[str | None]]

CHECK_TIMEOUT = 2.0
PROBE_SECONDS = 5.0
GATING: frozenset[str] = frozenset({"postgres"})

DEPENDENCY_UP = Gauge(
    "dependency_up",
    "1 when the service's latest check of a dependency succeeded, else 0.",
    ("service", "dependency"),
)


async def run_checks(probes: dict[str, Check], timeout: float = CHECK_TIMEOUT) -> dict[str, str]:
    """Every check at once, each bounded by `timeout`: "ok" or what is wrong."""

    async def run(check: Check) -> str:
        try:
            with tracing.untraced():
                problem = await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            return "unreachable (timed out)"
        except Exception as exc:  # any failure means "not fine"; say which
            return f"unreachable ({type(exc).__name__})"
        return problem or "ok"

    results = await asyncio.gather(*(run(check) for check in probes.values()))
    return dict(zip(probes, results, strict=True))


def record(service: str, states: dict[str, str]) -> None:
    for name, state in states.items():
        DEPENDENCY_UP.labels(service, name).set(1 if state == "ok" else 0)


async def watch(service: str, probes: dict[str, Check], states: dict[str, str], stop: asyncio.Event) -> None:
    """Keep `states` (what /health reports) and the gauge current until `stop`."""
    states.update({name: "not checked yet" for name in probes})
    while not stop.is_set():
        states.update(await run_checks(probes))
        record(service, states)
        try:
            await asyncio.wait_for(stop.wait(), PROBE_SECONDS)
        except TimeoutError:
            pass
