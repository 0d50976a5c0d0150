"""The HTTP metrics every service exports, named as the dashboards and alerts expect."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LABELS = ("service", "method", "route", "status")

REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request.",
    LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUESTS = Counter("requests", "HTTP requests answered.", LABELS)
# Server-side failures only (5xx): a client's mistake is not the service's error rate.
ERRORS = Counter("errors", "HTTP requests answered with a 5xx status.", LABELS)

# Paths that match no route share one label so scanners cannot grow the series count.
UNMATCHED_ROUTE = "<unmatched>"

DB_POOL = Gauge("db_pool_connections", "PostgreSQL pool connections by state.", ("service", "state"))
# The most connections a process's pool may open (pool size + overflow): saturation is
# db_pool_connections{state="checked_out"} over this.
DB_POOL_MAX = Gauge("db_pool_max_connections", "PostgreSQL pool size plus its overflow.", ("service",))
REDIS_POOL = Gauge("redis_pool_connections", "Redis pool connections by state.", ("service", "state"))


def watch_pools(service: str, engine: Any | None, redis: Any | None) -> None:
    """Pool gauges read at scrape time (nothing is counted on the request path)."""
    if engine is not None:
        pool = engine.pool
        DB_POOL.labels(service, "checked_out").set_function(pool.checkedout)
        DB_POOL.labels(service, "idle").set_function(pool.checkedin)
        # Always 0 with the kit's engines, which keep every connection they open (kit/db.py).
        DB_POOL.labels(service, "overflow").set_function(lambda: max(0, pool.overflow()))
        # QueuePool keeps its overflow limit private; a pool without one counts as its size.
        DB_POOL_MAX.labels(service).set_function(
            lambda: pool.size() + max(0, getattr(pool, "_max_overflow", 0))
        )
    if redis is not None:
        connections = redis.connection_pool
        # redis-py keeps these as private sets/lists; absent in another version means 0, not a crash.
        REDIS_POOL.labels(service, "in_use").set_function(
            lambda: len(getattr(connections, "_in_use_connections", ()))
        )
        REDIS_POOL.labels(service, "idle").set_function(
            lambda: len(getattr(connections, "_available_connections", ()))
        )
