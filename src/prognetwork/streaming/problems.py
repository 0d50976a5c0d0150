"""The problems the streaming service answers with, besides the kit's shared ones."""

from prognetwork.kit.problems import ProblemType

IDEMPOTENCY_KEY_REQUIRED = ProblemType(
    400, "idempotency-key-required", "An Idempotency-Key header is required"
)
IDEMPOTENCY_KEY_INVALID = ProblemType(400, "idempotency-key-invalid", "The Idempotency-Key is not valid")
EVENT_TYPE_NOT_ALLOWED = ProblemType(403, "event-type-not-allowed", "The caller may not publish this event")
PAYLOAD_TOO_LARGE = ProblemType(413, "payload-too-large", "The event's payload is too large")
IDEMPOTENCY_KEY_REUSED = ProblemType(
    422, "idempotency-key-reused", "The Idempotency-Key was used for a different event"
)
STREAM_UNAVAILABLE = ProblemType(503, "stream-unavailable", "The event stream is not available here")
EVENTS_GONE = ProblemType(410, "events-gone", "The events after this position are no longer kept")
