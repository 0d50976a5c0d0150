"""The Health page's data: every service's readiness, and its traffic from Prometheus when there is one.

Readiness is asked of each service's ops port (`/readiness`, what the orchestrator's probes ask),
all at once, each bounded by PROBE_TIMEOUT_SECONDS. With `PROMETHEUS_URL` set, the last
ADMIN_HEALTH_WINDOW_SECONDS (in POINTS steps) of request rate, error ratio and p95 latency per
service come from the same expressions the recording rules use (deploy/monitoring/prometheus/rules/http.yml), queried raw so
a Prometheus without those rules serves them too.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import aiohttp

PROBE_TIMEOUT_SECONDS = 2.0
POINTS = 60
SERIES = {
    "rate": "sum by (service) (rate(requests_total[5m]))",
    "errors": "sum by (service) (rate(errors_total[5m])) / (sum by (service) (rate(requests_total[5m])) > 0)",
    "p95": "histogram_quantile(0.95, sum by (le, service) "
    '(rate(http_request_duration_seconds_bucket{route!~".*/events/stream.*"}[5m])))',
}


@dataclass
class ServiceHealth:
    name: str
    url: str
    state: str  # "ready", "degraded" (ready, a dependency failing), "not ready" or "unreachable"
    detail: str = ""
    series: dict[str, list[float]] = field(default_factory=dict)  # rate, errors, p95: oldest first

    @property
    def ok(self) -> bool:
        return self.state in ("ready", "degraded")

    def latest(self, name: str) -> float | None:
        values = [v for v in self.series.get(name, []) if math.isfinite(v)]
        return values[-1] if values else None


@dataclass
class HealthReport:
    services: list[ServiceHealth]
    prometheus: str | None  # None: not configured; "ok", or why it could not be read

    @property
    def all_ready(self) -> bool:
        return all(s.ok for s in self.services)


async def readiness(http: aiohttp.ClientSession, name: str, ops_url: str) -> ServiceHealth:
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_SECONDS)
    try:
        async with http.get(f"{ops_url}/readiness", timeout=timeout, allow_redirects=False) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            if response.status == 200:
                # Ready, and serving around whatever its dependencies report as failing.
                failing = (
                    {
                        dependency: state
                        for dependency, state in (body.get("dependencies") or {}).items()
                        if state != "ok"
                    }
                    if isinstance(body, dict)
                    else {}
                )
                if failing:
                    degraded = "; ".join(f"{d}: {s}" for d, s in failing.items())
                    return ServiceHealth(name, ops_url, "degraded", degraded)
                return ServiceHealth(name, ops_url, "ready")
            detail = body.get("detail") if isinstance(body, dict) else None
            return ServiceHealth(name, ops_url, "not ready", str(detail or f"HTTP {response.status}"))
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else "connection failed"
        return ServiceHealth(name, ops_url, "unreachable", f"{reason}: {ops_url}")


async def prometheus_series(
    http: aiohttp.ClientSession, base_url: str, window: int
) -> dict[str, dict[str, list[float]]]:
    """series name → service → values over the window (NaN where Prometheus had none)."""
    step = max(1, window // POINTS)
    end = time.time()
    start = end - window
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_SECONDS * 2)

    async def one(expr: str) -> dict[str, list[float]]:
        params = {"query": expr, "start": f"{start:.0f}", "end": f"{end:.0f}", "step": str(step)}
        url = base_url.rstrip("/") + "/api/v1/query_range"
        async with http.get(url, params=params, timeout=timeout) as response:
            response.raise_for_status()
            body = await response.json()
        found: dict[str, list[float]] = {}
        slots = int((end - start) // step) + 1
        for result in body.get("data", {}).get("result", []):
            service = result.get("metric", {}).get("service")
            if not service:
                continue
            values = [math.nan] * slots
            for at, value in result.get("values", []):
                slot = round((float(at) - start) / step)
                if 0 <= slot < slots:
                    try:
                        values[slot] = float(value)
                    except ValueError:
                        pass
            # Leading gaps (before the service's first sample) say nothing: drop them.
            first = next((i for i, v in enumerate(values) if math.isfinite(v)), len(values))
            found[service] = values[first:]
        return found

    results = await asyncio.gather(*(one(expr) for expr in SERIES.values()))
    return dict(zip(SERIES, results, strict=True))


async def report(
    http: aiohttp.ClientSession, health_urls: dict[str, str], prometheus_url: str | None, window: int
) -> HealthReport:
    probes = asyncio.gather(*(readiness(http, name, url) for name, url in health_urls.items()))
    if prometheus_url is None:
        return HealthReport(list(await probes), None)
    services, metrics = await asyncio.gather(
        probes, prometheus_series(http, prometheus_url, window), return_exceptions=True
    )
    if isinstance(services, BaseException):
        raise services
    if isinstance(metrics, BaseException):
        if not isinstance(metrics, aiohttp.ClientError | TimeoutError | ValueError):
            raise metrics
        return HealthReport(list(services), f"Prometheus did not answer ({type(metrics).__name__})")
    for service in services:
        service.series = {name: by_service.get(service.name, []) for name, by_service in metrics.items()}
    return HealthReport(list(services), "ok")
