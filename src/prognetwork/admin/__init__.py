"""The admin console (port 3000): a server-rendered web app for the platform's administrators and
operators — users, tenants, the live event log, emails, the audit log and every service's health.

It owns nothing but its sign-in sessions (in Redis: the operator's tokens never reach the browser)
and talks to the platform only through the API gateway, with the signed-in operator's own access
token, so the services decide what each role may see and do. Operators read; admins also act.
"""

from prognetwork.admin.settings import AdminSettings
from prognetwork.kit.service import ServiceSpec

# Redis holds the console's sessions (each with the operator's token pair and CSRF token).
SPEC = ServiceSpec(
    name="admin-client", package=__name__, port=3000, settings=AdminSettings, needs=frozenset({"redis"})
)
