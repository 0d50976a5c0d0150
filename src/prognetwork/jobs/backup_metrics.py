"""The backup job's metrics, pushed to a Pushgateway (a job that has ended cannot be scraped).

Everything goes to the one group `job="backup"`, which the BackupTooOld / BackupMetricAbsent
alerts (deploy/monitoring/prometheus/rules/alerts.yml) read, with POST semantics
(`pushadd_to_gateway`): a push replaces only the metrics it names, so `verify` does not erase
what `create` pushed, and a failed run leaves the last success timestamp in place.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

log = logging.getLogger(__name__)

JOB = "backup"

LAST_SUCCESS = "backup_last_success_timestamp_seconds"
LAST_DURATION = "backup_last_duration_seconds"
LAST_SIZE = "backup_last_size_bytes"
LAST_FAILURE = "backup_last_failure_timestamp_seconds"
LAST_VERIFY_SUCCESS = "backup_last_verify_success_timestamp_seconds"
LAST_VERIFY_DURATION = "backup_last_verify_duration_seconds"
LAST_VERIFY_FAILURE = "backup_last_verify_failure_timestamp_seconds"

HELP = {
    LAST_SUCCESS: "When the last backup completed (its manifest written), Unix time.",
    LAST_DURATION: "How long the last successful backup took.",
    LAST_SIZE: "The size of the last successful backup's dump.",
    LAST_FAILURE: "When a backup last failed, Unix time.",
    LAST_VERIFY_SUCCESS: "When a backup was last restored and matched its manifest, Unix time.",
    LAST_VERIFY_DURATION: "How long the last successful verification took.",
    LAST_VERIFY_FAILURE: "When a verification last failed, Unix time.",
}


def push(gateway: str | None, values: dict[str, float], timeout: float = 10.0, quiet: bool = False) -> bool:
    """Push `values` (metric name → value); False, with a log line unless `quiet`, if not pushed
    (a failed run reports its own error; one line is enough)."""
    if not gateway:
        if not quiet:
            log.warning("PUSHGATEWAY_URL is not set: backup metrics not pushed")
        return False
    registry = CollectorRegistry()
    for name, value in values.items():
        Gauge(name, HELP[name], registry=registry).set(value)
    try:
        pushadd_to_gateway(gateway, job=JOB, registry=registry, timeout=timeout)
    except OSError as exc:
        if quiet:
            return False
        log.warning("cannot push backup metrics to %s: %s", gateway, exc)
        return False
    return True


def now() -> float:
    return time.time()
