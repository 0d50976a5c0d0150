"""The event streaming service's settings."""

from __future__ import annotations

from pydantic import Field

from prognetwork.kit.settings import Settings


class StreamingSettings(Settings):
    # SSE keep-alive comments, frames a subscriber may fall behind before it is cut off, largest
    # payload a producer may publish, and the poll behind LISTEN/NOTIFY.
    stream_heartbeat_seconds: float = Field(15.0, alias="STREAM_HEARTBEAT_SECONDS", gt=0)
    stream_queue_limit: int = Field(1000, alias="STREAM_QUEUE_LIMIT", ge=1)
    stream_max_payload_bytes: int = Field(64 * 1024, alias="STREAM_MAX_PAYLOAD_BYTES", ge=1)
    stream_poll_seconds: float = Field(2.0, alias="STREAM_POLL_SECONDS", gt=0)
