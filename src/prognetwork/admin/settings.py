"""The admin console's settings: where the gateway is, where each service's health is, Prometheus,
and how long a sign-in lasts.

`SERVICE_HEALTH_URLS` (JSON, service name → ops URL) lists what the Health page probes. Unset, it is
derived from each service's API URL (`USER_SERVICE_URL`, … as `prog up` sets them) with the port
+ 1000, the ops port every service listens on by default; outside development, set it to the
addresses the ops ports have there.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator

from prognetwork.kit.service import OPS_PORT_OFFSET
from prognetwork.kit.settings import Settings

ROLES = ("admin", "operator")  # the platform roles the console admits; only admins act


class AdminSettings(Settings):
    # Every call to the platform goes through the gateway, with the operator's access token.
    api_gateway_url: str = Field("http://127.0.0.1:8000", alias="API_GATEWAY_URL")
    # The services' API URLs, only to derive their ops URLs when SERVICE_HEALTH_URLS is unset.
    user_service_url: str = Field("http://127.0.0.1:3007", alias="USER_SERVICE_URL")
    notification_service_url: str = Field("http://127.0.0.1:3004", alias="NOTIFICATION_SERVICE_URL")
    event_streaming_url: str = Field("http://127.0.0.1:8001", alias="EVENT_STREAMING_URL")
    billing_service_url: str = Field("http://127.0.0.1:3003", alias="BILLING_SERVICE_URL")
    admin_client_url: str = Field("http://127.0.0.1:3000", alias="ADMIN_CLIENT_URL")
    service_health_urls: dict[str, str] | None = Field(None, alias="SERVICE_HEALTH_URLS")
    # Optional: request rate, error ratio and p95 per service on the Health page.
    prometheus_url: str | None = Field(None, alias="PROMETHEUS_URL")
    # How far back the Health page's charts look (60 points over this span).
    admin_health_window_seconds: int = Field(1800, alias="ADMIN_HEALTH_WINDOW_SECONDS", ge=60, le=7 * 86400)
    # A session ends after this long without a request, and after its lifetime whatever happens.
    admin_session_idle_seconds: int = Field(1800, alias="ADMIN_SESSION_IDLE_SECONDS", ge=60, le=86400)
    admin_session_max_seconds: int = Field(12 * 3600, alias="ADMIN_SESSION_MAX_SECONDS", ge=300, le=7 * 86400)
    admin_request_timeout_seconds: float = Field(10.0, alias="ADMIN_REQUEST_TIMEOUT_SECONDS", gt=0, le=60)

    @field_validator("service_health_urls", mode="before")
    @classmethod
    def _json_text(cls, value: object) -> object:
        # The environment source decodes JSON itself; the same text given as an argument
        # (`prog config check` over an env file, tests) is decoded here.
        return json.loads(value) if isinstance(value, str) else value

    @property
    def secure_cookies(self) -> bool:
        """Cookies carry `Secure` everywhere but development (served over plain http locally)."""
        return not self.is_development

    @property
    def health_urls(self) -> dict[str, str]:
        """Service name → ops URL (/readiness is asked there), in a stable order."""
        if self.service_health_urls is not None:
            return {name: url.rstrip("/") for name, url in self.service_health_urls.items()}
        api_urls = {
            "api-gateway": self.api_gateway_url,
            "user-service": self.user_service_url,
            "notification-service": self.notification_service_url,
            "event-streaming": self.event_streaming_url,
            "billing-service": self.billing_service_url,
            "admin-client": self.admin_client_url,
        }
        return {name: ops_url(url) for name, url in api_urls.items()}

    def own_problems(self) -> list[str]:
        found = []
        for name, value in (
            ("API_GATEWAY_URL", self.api_gateway_url),
            ("PROMETHEUS_URL", self.prometheus_url),
        ):
            if value is not None and urlsplit(value).scheme not in ("http", "https"):
                found.append(f"{name} must be an http:// or https:// URL (got {value!r})")
        if self.admin_session_idle_seconds > self.admin_session_max_seconds:
            found.append("ADMIN_SESSION_IDLE_SECONDS must not exceed ADMIN_SESSION_MAX_SECONDS")
        return found


def ops_url(api_url: str) -> str:
    """The ops URL of a service at `api_url`: the same host, the port + 1000."""
    parts = urlsplit(api_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{host}:{port + OPS_PORT_OFFSET}", "", "", ""))
