"""The user service (port 3007): accounts, email verification, sessions and access tokens."""

from prognetwork.kit.service import ServiceSpec
from prognetwork.users.settings import UsersSettings

SPEC = ServiceSpec(
    name="user-service",
    package=__name__,
    port=3007,
    settings=UsersSettings,
    needs=frozenset({"postgres", "redis"}),
    secrets=("JWT_SIGNING_KEYS",),
    models=(f"{__name__}.models",),
)
