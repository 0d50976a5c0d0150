"""Structured logs: one JSON object a line, with the request id and service bound in.

`configure` routes structlog through the standard library's loggers, so a logger's level is
the standard one. Below it an event is dropped, but only after structlog has run its
processors on it; per-request lines ask `enabled` first and skip even that.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from prognetwork.kit.tracing import log_ids

# Keys whose values are never written to a log, whatever logs them.
REDACTED_KEYS = frozenset(
    {"password", "token", "access_token", "refresh_token", "authorization", "secret", "api_key", "cookie"}
)


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in event.keys() & REDACTED_KEYS:
        event[key] = "[redacted]"
    return event


class _StdoutHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stdout` is at the time (it may be replaced after start-up)."""

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


_configured = False
_loggers: dict[str, logging.Logger] = {}  # getLogger takes the logging module's lock each call


def enabled(name: str, level: int) -> bool:
    """Whether an event at `level` on logger `name` would be written. Until `configure` runs,
    structlog's defaults print everything, so everything is."""
    if not _configured:
        return True
    logger = _loggers.get(name)
    if logger is None:
        logger = _loggers[name] = logging.getLogger(name)
    return logger.isEnabledFor(level)


def configure(service: str, level: str = "INFO", fmt: str = "json") -> None:
    global _configured
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        log_ids,
        _redact,
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # Library logs (uvicorn, alembic, sqlalchemy) go through the same renderer.
    handler = _StdoutHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
    structlog.contextvars.bind_contextvars(service=service)
    _configured = True
