"""The API gateway's settings: its upstreams, its route table and its rate limits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prognetwork.kit.settings import Settings


class Route(BaseModel):
    """One line of the gateway's route table: a path prefix and where it goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(pattern=r"^/")
    upstream: str  # a key of `GatewaySettings.upstreams`: the upstream service's name
    public: bool = False  # no access token needed
    limit: str = "default"  # rate-limit group
    stream: bool = False  # long-lived responses (SSE): no read timeout
    strip_prefix: str = "/api"  # /api/v1/x → upstream /v1/x


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: int = Field(gt=0)
    window_seconds: int = Field(gt=0)


DEFAULT_ROUTES = [
    Route(prefix="/api/v1/auth/register", upstream="user-service", public=True, limit="auth"),
    Route(prefix="/api/v1/auth/login", upstream="user-service", public=True, limit="auth"),
    Route(prefix="/api/v1/auth/refresh", upstream="user-service", public=True, limit="auth"),
    Route(prefix="/api/v1/auth/verify-email", upstream="user-service", public=True, limit="auth"),
    Route(prefix="/api/v1/auth/password-reset", upstream="user-service", public=True, limit="auth"),
    # Its credential is the refresh token in the body, as for /refresh.
    Route(prefix="/api/v1/auth/switch-tenant", upstream="user-service", public=True, limit="auth"),
    Route(prefix="/api/v1/auth", upstream="user-service"),
    Route(prefix="/api/v1/users", upstream="user-service"),
    Route(prefix="/api/v1/tenants", upstream="user-service"),
    Route(prefix="/api/v1/invitations", upstream="user-service"),
    Route(prefix="/api/v1/billing/plans", upstream="billing-service", public=True, limit="anonymous"),
    # Stripe calls this; the billing service verifies Stripe's signature on every delivery.
    Route(
        prefix="/api/v1/billing/webhooks/stripe", upstream="billing-service", public=True, limit="webhooks"
    ),
    Route(prefix="/api/v1/billing", upstream="billing-service"),
    # The platform admin API (admin and operator roles, checked by each owning service).
    Route(prefix="/api/v1/admin/emails", upstream="notification-service"),
    Route(prefix="/api/v1/admin/billing", upstream="billing-service"),
    Route(prefix="/api/v1/admin", upstream="user-service"),
    Route(prefix="/api/v1/events/stream", upstream="event-streaming", stream=True),
    Route(prefix="/api/v1/events", upstream="event-streaming"),
    Route(
        prefix="/.well-known/jwks.json",
        upstream="user-service",
        public=True,
        limit="anonymous",
        strip_prefix="",
    ),
]
# Development only: the email outbox, so a newcomer needs nothing but the gateway's port.
DEVELOPMENT_ROUTES = [
    Route(prefix="/api/v1/dev", upstream="notification-service", public=True, limit="anonymous"),
]
DEFAULT_RATE_LIMITS = {
    "auth": RateLimit(requests=30, window_seconds=60),
    "anonymous": RateLimit(requests=300, window_seconds=60),
    # Per source address; Stripe retries what is refused, so a burst after an outage is delayed, not lost.
    "webhooks": RateLimit(requests=600, window_seconds=60),
    "default": RateLimit(requests=1200, window_seconds=60),
}


class GatewaySettings(Settings):
    # Where upstreams live (first matching route prefix wins); GATEWAY_UPSTREAMS adds or overrides.
    user_service_url: str = Field("http://127.0.0.1:3007", alias="USER_SERVICE_URL")
    event_streaming_url: str = Field("http://127.0.0.1:8001", alias="EVENT_STREAMING_URL")
    notification_service_url: str = Field("http://127.0.0.1:3004", alias="NOTIFICATION_SERVICE_URL")
    billing_service_url: str = Field("http://127.0.0.1:3003", alias="BILLING_SERVICE_URL")
    gateway_upstreams: dict[str, str] = Field(default_factory=dict, alias="GATEWAY_UPSTREAMS")
    gateway_routes: list[Route] = Field(default_factory=lambda: list(DEFAULT_ROUTES), alias="GATEWAY_ROUTES")
    # Merged over the defaults: setting one group's limit keeps every other group's.
    gateway_rate_limits: dict[str, RateLimit] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS), alias="GATEWAY_RATE_LIMITS"
    )
    upstream_connect_timeout_seconds: float = Field(2.0, alias="UPSTREAM_CONNECT_TIMEOUT_SECONDS", gt=0)
    upstream_timeout_seconds: float = Field(30.0, alias="UPSTREAM_TIMEOUT_SECONDS", gt=0)

    @field_validator("gateway_rate_limits")
    @classmethod
    def _over_the_defaults(cls, limits: dict[str, RateLimit]) -> dict[str, RateLimit]:
        return {**DEFAULT_RATE_LIMITS, **limits}

    @model_validator(mode="after")
    def _routes_are_resolvable(self) -> GatewaySettings:
        for route in self.routes:
            if route.upstream not in self.upstreams:
                raise ValueError(f"route {route.prefix} names unknown upstream {route.upstream!r}")
            if route.limit not in self.gateway_rate_limits:
                raise ValueError(f"route {route.prefix} names unknown rate-limit group {route.limit!r}")
        return self

    @property
    def upstreams(self) -> dict[str, str]:
        defaults = {
            "user-service": self.user_service_url,
            "event-streaming": self.event_streaming_url,
            "notification-service": self.notification_service_url,
            "billing-service": self.billing_service_url,
        }
        return {**defaults, **self.gateway_upstreams}

    @property
    def routes(self) -> list[Route]:
        """The route table: GATEWAY_ROUTES, or the defaults (plus development's)."""
        if "gateway_routes" in self.model_fields_set or not self.is_development:
            return self.gateway_routes
        return self.gateway_routes + DEVELOPMENT_ROUTES
