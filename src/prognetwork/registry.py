"""Every service of the platform, found by the `SPEC` its package declares.

Adding a service is adding a package with a `SPEC` (see CONTRIBUTING.md); nothing here changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

import prognetwork
from prognetwork.kit.service import ServiceSpec


@cache
def services() -> dict[str, ServiceSpec]:
    """Every registered service by name, in API-port order (the order `prog up` starts them)."""
    found: list[ServiceSpec] = []
    for module in pkgutil.iter_modules(prognetwork.__path__):
        if not module.ispkg:
            continue
        spec = getattr(importlib.import_module(f"prognetwork.{module.name}"), "SPEC", None)
        if isinstance(spec, ServiceSpec):
            found.append(spec)
    names = [s.name for s in found]
    ports = [p for s in found for p in (s.port, s.ops_port)]
    if len(set(names)) != len(names) or len(set(ports)) != len(ports):
        raise RuntimeError(
            f"two services share a name or a port: {[(s.name, s.port, s.ops_port) for s in found]}"
        )
    return {s.name: s for s in sorted(found, key=lambda s: s.port)}


def service(name: str) -> ServiceSpec:
    """The spec called `name` (KeyError naming the choices otherwise)."""
    known = services()
    if name not in known:
        raise KeyError(f"unknown service {name!r}; choose one of: {', '.join(known)}")
    return known[name]
