"""The event streaming service (port 8001): the event log as Server-Sent Events, polling and publishing."""

from prognetwork.kit.service import ServiceSpec
from prognetwork.streaming.settings import StreamingSettings

# Redis holds the signed-out sessions every verifier checks.
SPEC = ServiceSpec(
    name="event-streaming",
    package=__name__,
    port=8001,
    settings=StreamingSettings,
    needs=frozenset({"postgres", "redis"}),
    models=(f"{__name__}.models",),
)
