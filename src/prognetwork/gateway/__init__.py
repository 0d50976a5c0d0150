"""The API gateway (port 8000): the one entry point for clients — routing, token verification,
rate limits, streaming relay."""

from prognetwork.gateway.settings import GatewaySettings
from prognetwork.kit.service import ServiceSpec

SPEC = ServiceSpec(
    name="api-gateway",
    package=__name__,
    port=8000,
    settings=GatewaySettings,
    needs=frozenset({"redis"}),
    edge=True,
)
