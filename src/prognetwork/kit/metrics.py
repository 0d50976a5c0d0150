"""The HTTP metrics every service exports, named as the dashboards and alerts expect."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LABELS = ("service", "method", "route", "status")

REQUEST_DURATION = Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request.", LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUESTS = Counter("requests", "HTTP requests answered.", LABELS)
# Server-side failures only (5xx): a client's mistake is not the service's error rate.
ERRORS = Counter("errors", "HTTP requests answered with a 5xx status.", LABELS)

# Paths that match no route share one label so scanners cannot grow the series count.
UNMATCHED_ROUTE = "<unmatched>"
