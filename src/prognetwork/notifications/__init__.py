"""The notification service (port 3004): emails driven by the event log, and the operators' view
of them (the admin API)."""

from prognetwork.kit.service import ServiceSpec
from prognetwork.notifications.settings import NotificationSettings

# Redis holds the signed-out sessions every verifier checks (the admin API verifies tokens).
SPEC = ServiceSpec(
    name="notification-service",
    package=__name__,
    port=3004,
    settings=NotificationSettings,
    needs=frozenset({"postgres", "redis"}),
    secrets=("SENDGRID_API_KEY",),
    models=(f"{__name__}.models",),
)
