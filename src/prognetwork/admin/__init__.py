"""The admin client (port 3000): say here what it does and what it owns."""

from prognetwork.admin.settings import AdminSettings
from prognetwork.kit.service import ServiceSpec

# needs: "postgres" and/or "redis" (readiness checks them; `prog config check` requires them);
# secrets: names read through the secrets provider; models: modules the migrations describe.
SPEC = ServiceSpec(name="admin-client", package=__name__, port=3000, settings=AdminSettings)
