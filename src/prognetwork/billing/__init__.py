"""The billing service (port 3003): say here what it does and what it owns."""

from prognetwork.billing.settings import BillingSettings
from prognetwork.kit.service import ServiceSpec

# needs: "postgres" and/or "redis" (readiness checks them; `prog config check` requires them);
# secrets: names read through the secrets provider; models: modules the migrations describe.
SPEC = ServiceSpec(name="billing-service", package=__name__, port=3003, settings=BillingSettings)
