"""What a service is, as the rest of the platform sees it: one `ServiceSpec` per service package.

A service package declares `SPEC` in its `__init__.py`; `prognetwork.registry` finds every such
package. `prog serve` / `prog up`, readiness, `prog config check`, the migrations and the tests
read the specs, so nothing outside a service's own folder (and its deploy entries) names it.

Invariants: `name` is the one name of the service everywhere — CLI, image, compose service,
Kubernetes objects, the `service` label of every metric, dashboards and alerts. Importing a
package to read its spec is cheap (settings only); the app is imported only to run it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from prognetwork.kit.settings import Settings

Dependency = Literal["postgres", "redis"]
OPS_PORT_OFFSET = 1000  # the ops port is the API port + this, unless OPS_PORT says otherwise


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str  # e.g. "user-service"
    package: str  # the Python package, e.g. "prognetwork.users"
    port: int  # the API port; `PORT` overrides it for one process
    settings: type[Settings]  # the service's own settings class (a kit Settings subclass)
    needs: frozenset[Dependency] = frozenset()  # what readiness checks and configuration requires
    secrets: tuple[str, ...] = ()  # read through the secrets provider; checked by `prog config check`
    models: tuple[str, ...] = ()  # modules whose ORM models the migrations describe
    app: str = "app:create_app"  # "module:function" in the package, building the ASGI app from settings
    edge: bool = False  # faces clients directly (the gateway); every other service sits behind it

    @property
    def ops_port(self) -> int:
        """/health, /readiness, /metrics and /docs: probes and Prometheus only."""
        return self.port + OPS_PORT_OFFSET

    @property
    def env_prefix(self) -> str:
        """How environment variables name this service: `user-service` → `USER_SERVICE`."""
        return self.name.upper().replace("-", "_")

    def load_settings(self, **values: Any) -> Settings:
        return self.settings(**values)

    def create_app(self, settings: Settings) -> Any:
        module, _, function = self.app.partition(":")
        factory: Callable[[Settings], Any] = getattr(
            importlib.import_module(f"{self.package}.{module}"), function
        )
        return factory(settings)
