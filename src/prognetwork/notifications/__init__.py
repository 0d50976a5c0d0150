"""The notification service (port 3004): emails driven by the event log."""

from prognetwork.kit.service import ServiceSpec
from prognetwork.notifications.settings import NotificationSettings

SPEC = ServiceSpec(
    name="notification-service",
    package=__name__,
    port=3004,
    settings=NotificationSettings,
    needs=frozenset({"postgres"}),
    secrets=("SENDGRID_API_KEY",),
    models=(f"{__name__}.models",),
)
